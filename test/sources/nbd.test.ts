import { open as openFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockError, type BlockSource } from "../../runtime/block/types.ts";
import { NbdSource, nbdInfo, parseNbdUrl } from "../../runtime/sources/nbd.ts";
import {
  execFileAsync,
  makeRandomImage,
  makeTempDir,
  NbdkitServer,
  QemuNbdServer,
  removeDir,
  requireTool,
} from "./servers.ts";

const IMAGE_BYTES = 8 * 1024 * 1024;
const SECTORS = IMAGE_BYTES / 512;

let dir: string;
let imagePath: string;
let image: Buffer;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  dir = await makeTempDir("medic-nbd-");
  imagePath = join(dir, "disk.img");
  image = await makeRandomImage(imagePath, IMAGE_BYTES);
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  await removeDir(dir);
});

async function nbdkit(options: Parameters<typeof NbdkitServer.start>[1]): Promise<NbdkitServer> {
  const server = await NbdkitServer.start(dir, options);
  cleanups.push(() => server.stop());
  return server;
}

async function qemuNbd(options: Parameters<typeof QemuNbdServer.start>[1]): Promise<QemuNbdServer> {
  const server = await QemuNbdServer.start(dir, options);
  cleanups.push(() => server.stop());
  return server;
}

async function open(url: string, options: Parameters<typeof NbdSource.open>[1] = {}): Promise<NbdSource> {
  const source = await NbdSource.open(url, { reconnectAttempts: 2, retryDelayMs: 20, ...options });
  cleanups.push(() => source.close());
  return source;
}

function expected(lba: number, count: number, data: Buffer = image): Buffer {
  return data.subarray(lba * 512, (lba + count) * 512);
}

/** Deterministic pseudo-random read positions (so a failure can be reproduced). */
function* positions(n: number, maxCount: number, sectors = SECTORS, seed = 1): Generator<[number, number]> {
  let x = seed;
  const next = () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x;
  };
  for (let i = 0; i < n; i++) {
    const count = 1 + (next() % maxCount);
    const lba = next() % (sectors - count + 1);
    yield [lba, count];
  }
}

async function checkRandomReads(
  source: BlockSource,
  n: number,
  maxCount: number,
  data: Buffer = image,
): Promise<void> {
  for (const [lba, count] of positions(n, maxCount, source.sectors)) {
    const got = await source.read(lba, count);
    expect(got.length).toBe(count * 512);
    if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(expected(lba, count, data))) {
      throw new Error(`data mismatch reading sectors ${lba}+${count}`);
    }
  }
}

async function checkConcurrentReads(source: BlockSource, n: number, maxCount: number): Promise<void> {
  const reads = [...positions(n, maxCount, source.sectors, 7)].map(async ([lba, count]) => {
    const got = await source.read(lba, count);
    return Buffer.from(got).equals(expected(lba, count));
  });
  const results = await Promise.all(reads);
  expect(results.filter((ok) => !ok)).toHaveLength(0);
}

describe("NBD URLs", () => {
  it("parses nbd:// and nbd+unix:// forms", () => {
    expect(parseNbdUrl("nbd://example.com/disk")).toMatchObject({
      host: "example.com",
      port: 10809,
      exportName: "disk",
    });
    expect(parseNbdUrl("nbd://10.0.0.1:1234")).toMatchObject({
      host: "10.0.0.1",
      port: 1234,
      exportName: "",
    });
    expect(parseNbdUrl("nbd://h//disk")).toMatchObject({ exportName: "/disk" });
    expect(parseNbdUrl("nbd://h/hello%20world")).toMatchObject({ exportName: "hello world" });
    expect(parseNbdUrl("nbd://[::1]:99/x")).toMatchObject({ host: "::1", port: 99 });
    expect(parseNbdUrl("nbd+unix:///disk?socket=/run/nbd.sock")).toMatchObject({
      socketPath: "/run/nbd.sock",
      exportName: "disk",
    });
    expect(parseNbdUrl("nbd+unix:///?socket=/s")).toMatchObject({ socketPath: "/s", exportName: "" });
    expect(() => parseNbdUrl("nbd+unix:///disk")).toThrow(/socket=PATH/);
    expect(() => parseNbdUrl("nbds://h/x")).toThrow(/TLS/);
    expect(() => parseNbdUrl("http://h/x")).toThrow(BlockError);
  });
});

describe("NBD against nbdkit", () => {
  it("file plugin over TCP: handshake, size, random and whole-image reads", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const source = await open(server.url());
    expect(source.sectors).toBe(SECTORS);
    expect(source.description).toBe(`nbd://127.0.0.1:${server.port}/`);
    expect(source.info.structuredReplies).toBe(true);
    expect(source.info.readOnly).toBe(true);
    await checkRandomReads(source, 200, 300);
    const whole = await source.read(0, SECTORS);
    expect(Buffer.from(whole).equals(image)).toBe(true);
    // The last sector and a zero-length read.
    expect(Buffer.from(await source.read(SECTORS - 1, 1)).equals(expected(SECTORS - 1, 1))).toBe(true);
    expect((await source.read(5, 0)).length).toBe(0);
    await expect(source.read(SECTORS - 1, 2)).rejects.toMatchObject({ code: "range" });
  });

  it("file plugin over a unix socket", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`], unix: true });
    const source = await open(server.url());
    expect(source.description).toContain(`socket=${server.socketPath}`);
    expect(source.sectors).toBe(SECTORS);
    await checkRandomReads(source, 100, 2048);
    await checkConcurrentReads(source, 300, 64);
  });

  it("memory plugin filled with nbdcopy", async () => {
    const nbdcopy = requireTool("nbdcopy");
    const server = await nbdkit({ plugin: "memory", pluginArgs: [`size=${IMAGE_BYTES}`], readOnly: false });
    await execFileAsync(nbdcopy, [imagePath, server.url()]);
    const source = await open(server.url());
    expect(source.info.readOnly).toBe(false);
    await checkRandomReads(source, 100, 500);
    expect(Buffer.from(await source.read(0, SECTORS)).equals(image)).toBe(true);
  });

  it("the memory plugin's unwritten area reads as zeros", async () => {
    const server = await nbdkit({ plugin: "memory", pluginArgs: ["size=64M"] });
    const source = await open(server.url());
    const data = await source.read(1000, 4096);
    expect(data.every((b) => b === 0)).toBe(true);
  });

  it("without structured replies (nbdkit --no-sr): simple replies", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`], noSr: true });
    const source = await open(server.url());
    expect(source.info.structuredReplies).toBe(false);
    await checkRandomReads(source, 100, 700);
    await checkConcurrentReads(source, 200, 100);
  });

  it("structured replies can be declined by the client", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const source = await open(server.url(), { structuredReplies: false });
    expect(source.info.structuredReplies).toBe(false);
    await checkConcurrentReads(source, 100, 100);
  });

  it("pipelines: many reads in flight at once on one connection", async () => {
    // Each read takes 100 ms in the server; 32 of them one after another would take 3.2 s.
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["delay"],
      filterArgs: ["rdelay=100ms"],
      extra: ["--threads=32"],
    });
    const source = await open(server.url(), { maxInFlight: 32 });
    const start = performance.now();
    const reads = Array.from({ length: 32 }, (_, i) => source.read(i * 100, 8));
    const results = await Promise.all(reads);
    const elapsed = performance.now() - start;
    results.forEach((got, i) => {
      expect(Buffer.from(got).equals(expected(i * 100, 8))).toBe(true);
    });
    expect(elapsed).toBeLessThan(1500);
    expect(source.stats.requests).toBe(32);
  });

  it("limits requests in flight to maxInFlight", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["delay"],
      filterArgs: ["rdelay=100ms"],
      extra: ["--threads=32"],
    });
    const source = await open(server.url(), { maxInFlight: 2 });
    const start = performance.now();
    await Promise.all(Array.from({ length: 8 }, (_, i) => source.read(i * 100, 8)));
    // 8 requests, 2 at a time, 100 ms each: at least 400 ms.
    expect(performance.now() - start).toBeGreaterThanOrEqual(380);
  });

  it("splits reads larger than the server's maximum payload", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["blocksize-policy"],
      filterArgs: ["blocksize-maximum=65536", "blocksize-error-policy=error"],
    });
    const source = await open(server.url());
    expect(source.info).toMatchObject({ blockSizeAdvertised: true, maxBlockSize: 65536 });
    const got = await source.read(3, 2048); // 1 MiB
    expect(Buffer.from(got).equals(expected(3, 2048))).toBe(true);
    expect(source.stats.requests).toBe(16);
    await checkRandomReads(source, 30, 1000);
  });

  it("honours a minimum block size larger than a sector", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["blocksize-policy"],
      filterArgs: ["blocksize-minimum=4096", "blocksize-error-policy=error"],
    });
    const source = await open(server.url());
    expect(source.info.minBlockSize).toBe(4096);
    await checkRandomReads(source, 100, 40);
    expect(Buffer.from(await source.read(SECTORS - 3, 3)).equals(expected(SECTORS - 3, 3))).toBe(true);
  });

  it("rejects an export whose size is not a multiple of 512", async () => {
    const server = await nbdkit({ plugin: "memory", pluginArgs: ["size=1000"] });
    const error = await NbdSource.open(server.url()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "config" });
    expect((error as Error).message).toMatch(/1000 bytes is not a multiple of 512/);
  });

  it("NBD_OPT_INFO reports what nbdinfo reports", async () => {
    const server = await nbdkit({
      plugin: "memory",
      pluginArgs: ["size=3M"],
      filters: ["blocksize-policy"],
      filterArgs: ["blocksize-minimum=1024", "blocksize-preferred=8192", "blocksize-maximum=1048576"],
    });
    const { stdout } = await execFileAsync(requireTool("nbdinfo"), ["--json", server.url()]);
    const reference = JSON.parse(stdout).exports[0];
    const info = await nbdInfo(server.url());
    expect(info.size).toBe(reference["export-size"]);
    expect(info.minBlockSize).toBe(reference.block_size_minimum);
    expect(info.preferredBlockSize).toBe(reference.block_size_preferred);
    expect(info.maxBlockSize).toBe(reference.block_size_maximum);
    expect(info.readOnly).toBe(reference.is_read_only);
    expect(info.structuredReplies).toBe(true);
  });
});

describe("NBD against qemu-nbd", () => {
  it("unix socket: reads equal the file", async () => {
    const server = await qemuNbd({ file: imagePath, unix: true });
    const source = await open(server.url());
    expect(source.sectors).toBe(SECTORS);
    await checkRandomReads(source, 100, 1000);
    await checkConcurrentReads(source, 200, 64);
  });

  it("TCP with a named export; an unknown export name is a clear error", async () => {
    const server = await qemuNbd({ file: imagePath, exportName: "disk", description: "test image" });
    const source = await open(server.url("disk"));
    await checkRandomReads(source, 50, 100);
    const info = await nbdInfo(server.url("disk"));
    expect(info.description).toBe("test image");
    const error = await NbdSource.open(server.url("nope")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "config" });
    expect((error as Error).message).toMatch(/export "nope" not found on the server/);
    expect((error as Error).message).toMatch(/NBD_REP_ERR_UNKNOWN/);
  });

  it("a sparse file comes back as hole chunks that read as zeros", async () => {
    const path = join(dir, "sparse.img");
    const size = 16 * 1024 * 1024;
    const reference = Buffer.alloc(size);
    const handle = await openFile(path, "w");
    await handle.truncate(size);
    for (const at of [0, 5 * 1024 * 1024, size - 1024 * 1024]) {
      const part = image.subarray(0, 1024 * 1024);
      await handle.write(part, 0, part.length, at);
      part.copy(reference, at);
    }
    await handle.close();
    const server = await qemuNbd({ file: path, unix: true });
    const source = await open(server.url(), { maxRequestBytes: 4 * 1024 * 1024 });
    const whole = await source.read(0, size / 512);
    expect(Buffer.from(whole).equals(reference)).toBe(true);
    expect(source.stats.holeChunks).toBeGreaterThan(0);
    await checkRandomReads(source, 100, 4000, reference);
  });
});
