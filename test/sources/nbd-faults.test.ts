import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockError } from "../../runtime/block/types.ts";
import { type NbdOptions, NbdSource } from "../../runtime/sources/nbd.ts";
import type { SourceEvent } from "../../runtime/sources/options.ts";
import { chunk, dataChunk, NBD_REPLY_FLAG_DONE, simpleReply, startFakeNbd } from "./fake-nbd.ts";
import { makeRandomImage, makeTempDir, NbdkitServer, removeDir } from "./servers.ts";

const IMAGE_BYTES = 4 * 1024 * 1024;
const SECTORS = IMAGE_BYTES / 512;

let dir: string;
let imagePath: string;
let image: Buffer;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  dir = await makeTempDir("medic-nbd-faults-");
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

async function open(
  url: string,
  options: NbdOptions = {},
): Promise<{ source: NbdSource; events: SourceEvent[] }> {
  const events: SourceEvent[] = [];
  const source = await NbdSource.open(url, {
    retryDelayMs: 5,
    maxRetryDelayMs: 100,
    ...options,
    onEvent: (e) => events.push(e),
  });
  cleanups.push(() => source.close());
  return { source, events };
}

const expected = (lba: number, count: number) => image.subarray(lba * 512, (lba + count) * 512);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("NBD server-side read errors (nbdkit error filter)", () => {
  for (const noSr of [false, true]) {
    it(`a moderate error rate is absorbed by retries (${noSr ? "simple" : "structured"} replies)`, async () => {
      const server = await nbdkit({
        plugin: "file",
        pluginArgs: [`file=${imagePath}`],
        filters: ["error"],
        filterArgs: ["error-pread-rate=25%", "error=EIO"],
        noSr,
      });
      const { source, events } = await open(server.url(), { retries: 12 });
      const reads = Array.from({ length: 200 }, (_, i) => {
        const lba = (i * 97) % (SECTORS - 16);
        return source.read(lba, 16).then((got) => Buffer.from(got).equals(expected(lba, 16)));
      });
      expect((await Promise.all(reads)).every(Boolean)).toBe(true);
      // 200 requests at 25%: about 50 failures; zero would mean the filter (or the test) is broken.
      expect(source.stats.retries).toBeGreaterThan(10);
      const retry = events.find((e) => e.kind === "retry");
      expect(retry).toBeDefined();
      expect(retry!.kind === "retry" && retry!.error.message).toMatch(/EIO/);
    });
  }

  it("a persistent error becomes BlockError io naming the sectors after the retry limit", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["error"],
      filterArgs: ["error-pread-rate=100%", "error=EIO"],
    });
    const { source, events } = await open(server.url(), { retries: 3 });
    const error = await source.read(100, 8).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "io" });
    expect((error as Error).message).toMatch(/sectors 100\.\.107/);
    expect((error as Error).message).toMatch(/after 4 attempts/);
    expect((error as Error).message).toMatch(/EIO/);
    expect(events.filter((e) => e.kind === "retry")).toHaveLength(3);
    expect(source.stats.requests).toBe(4);
  });
});

describe("NBD connection loss", () => {
  for (const unix of [false, true]) {
    it(`server killed mid-stream and restarted on the same ${unix ? "socket" : "port"}: all reads complete correctly`, async () => {
      const server = await nbdkit({
        plugin: "file",
        pluginArgs: [`file=${imagePath}`],
        filters: ["delay"],
        filterArgs: ["rdelay=20ms"],
        unix,
      });
      const { source, events } = await open(server.url(), {
        maxInFlight: 8,
        reconnectAttempts: 10,
        retryDelayMs: 50,
      });
      const reads = Array.from({ length: 120 }, (_, i) => {
        const lba = (i * 61) % (SECTORS - 64);
        return source.read(lba, 64).then((got) => Buffer.from(got).equals(expected(lba, 64)));
      });
      await sleep(100);
      expect(source.stats.requests).toBeLessThan(120); // still mid-stream
      await server.kill();
      await sleep(300);
      await server.restart();
      const results = await Promise.all(reads);
      expect(results.every(Boolean)).toBe(true);
      expect(source.stats.reconnects).toBeGreaterThanOrEqual(1);
      expect(events.some((e) => e.kind === "reconnecting")).toBe(true);
      expect(events.some((e) => e.kind === "reconnected")).toBe(true);
      // The source keeps working on the new connection.
      expect(Buffer.from(await source.read(0, 8)).equals(expected(0, 8))).toBe(true);
    });
  }

  it("an idle connection that was lost is re-established by the next read", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const { source } = await open(server.url());
    expect(Buffer.from(await source.read(8, 8)).equals(expected(8, 8))).toBe(true);
    await server.restart();
    expect(Buffer.from(await source.read(16, 8)).equals(expected(16, 8))).toBe(true);
    expect(source.stats.reconnects).toBe(1);
  });

  it("a different export size after reconnecting is BlockError changed (and stays so)", async () => {
    const other = join(dir, "other.img");
    await makeRandomImage(other, IMAGE_BYTES * 2);
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const { source } = await open(server.url());
    await source.read(0, 8);
    await server.restart([`file=${other}`]);
    const error = await source.read(0, 8).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "changed" });
    expect((error as Error).message).toMatch(/size was 4194304 bytes, is 8388608 bytes/);
    await expect(source.read(0, 8)).rejects.toMatchObject({ code: "changed" });
  });

  it("gives up with BlockError io when the server does not come back", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const { source, events } = await open(server.url(), { reconnectAttempts: 3, retryDelayMs: 20 });
    await source.read(0, 8);
    await server.kill();
    const error = await source.read(0, 8).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "io" });
    expect((error as Error).message).toMatch(/3 reconnect attempts failed/);
    expect(events.filter((e) => e.kind === "reconnecting")).toHaveLength(3);
  });

  it("open fails with a clear error when nothing listens", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    await server.kill();
    const error = await NbdSource.open(server.url(), { reconnectAttempts: 1, retryDelayMs: 10 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BlockError);
    expect((error as Error).message).toMatch(/cannot connect after 2 attempts.*ECONNREFUSED/);
  });
});

describe("NBD timeouts (nbdkit delay filter)", () => {
  it("a server slower than the request timeout gives BlockError timeout after the retries", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["delay"],
      filterArgs: ["rdelay=3"],
    });
    const { source, events } = await open(server.url(), { timeoutMs: 200, retries: 2 });
    const start = performance.now();
    const error = await source.read(40, 8).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "timeout" });
    expect((error as Error).message).toMatch(/no reply within 200 ms/);
    expect((error as Error).message).toMatch(/sectors 40\.\.47/);
    expect(performance.now() - start).toBeLessThan(2500);
    expect(events.filter((e) => e.kind === "timeout")).toHaveLength(3);
  });

  it("a slow but timely server causes no timeout", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["delay"],
      filterArgs: ["rdelay=150ms"],
    });
    const { source } = await open(server.url(), { timeoutMs: 1000, retries: 0 });
    const got = await Promise.all([source.read(0, 8), source.read(8, 8), source.read(16, 8)]);
    expect(Buffer.from(got[2]!).equals(expected(16, 8))).toBe(true);
    expect(source.stats.timeouts).toBe(0);
  });
});

describe("NBD protocol violations (a deliberately broken server)", () => {
  async function fake(onRead: Parameters<typeof startFakeNbd>[0]["onRead"], structured = true) {
    const server = await startFakeNbd({ size: 1024 * 1024, structured, onRead });
    cleanups.push(() => server.close());
    return server;
  }

  it("a data chunk shorter than the request followed by DONE", async () => {
    const server = await fake(({ cookie, offset }, socket) => {
      socket.write(dataChunk(cookie, NBD_REPLY_FLAG_DONE, offset, Buffer.alloc(512, 1)));
    });
    const { source } = await open(server.url);
    const error = await source.read(0, 8).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "protocol" });
    expect((error as Error).message).toMatch(/ended after 512 bytes/);
  });

  it("a data chunk outside the requested range", async () => {
    const server = await fake(({ cookie, offset, length }, socket) => {
      socket.write(dataChunk(cookie, NBD_REPLY_FLAG_DONE, offset + 512, Buffer.alloc(length)));
    });
    const { source } = await open(server.url);
    await expect(source.read(0, 8)).rejects.toMatchObject({
      code: "protocol",
      message: /outside the request/,
    });
  });

  it("overlapping data chunks", async () => {
    const server = await fake(({ cookie, offset, length }, socket) => {
      socket.write(dataChunk(cookie, 0, offset, Buffer.alloc(length / 2 + 512)));
      socket.write(dataChunk(cookie, NBD_REPLY_FLAG_DONE, offset + length / 2, Buffer.alloc(length / 2)));
    });
    const { source } = await open(server.url);
    await expect(source.read(0, 8)).rejects.toMatchObject({ code: "protocol", message: /overlaps/ });
  });

  it("a reply with a bad magic number", async () => {
    const server = await fake(({ cookie }, socket) => {
      const bad = simpleReply(cookie, 0);
      bad.writeUInt32BE(0xdeadbeef, 0);
      socket.write(bad);
    });
    const { source } = await open(server.url);
    await expect(source.read(0, 1)).rejects.toMatchObject({
      code: "protocol",
      message: /bad reply magic 0xdeadbeef/,
    });
  });

  it("chunks in any order, a hole chunk, split across tiny TCP segments, are reassembled", async () => {
    const pattern = (at: number) => (at % 251) + 1;
    const server = await fake(({ cookie, offset, length }, socket) => {
      socket.setNoDelay(true);
      const half = length / 2;
      const data = Buffer.alloc(length);
      for (let i = 0; i < length; i++) data[i] = pattern(offset + i);
      const hole = Buffer.alloc(12);
      hole.writeBigUInt64BE(BigInt(offset), 0);
      hole.writeUInt32BE(512, 8);
      const bytes = Buffer.concat([
        dataChunk(cookie, 0, offset + half, data.subarray(half)),
        chunk(cookie, 0, 2, hole),
        dataChunk(cookie, 0, offset + 512, data.subarray(512, half)),
        chunk(cookie, NBD_REPLY_FLAG_DONE, 0, Buffer.alloc(0)),
      ]);
      let at = 0;
      const step = () => {
        if (at >= bytes.length) return;
        socket.write(bytes.subarray(at, at + 7));
        at += 7;
        setImmediate(step);
      };
      step();
    });
    const { source } = await open(server.url);
    const got = await source.read(3, 4);
    const want = Buffer.alloc(2048);
    for (let i = 512; i < 2048; i++) want[i] = pattern(3 * 512 + i);
    expect(Buffer.from(got).equals(want)).toBe(true);
    expect(source.stats.holeChunks).toBe(1);
    expect(source.stats.dataChunks).toBe(2);
  });

  it("an error chunk with a message is retried, then reported with the message", async () => {
    const server = await fake(({ cookie }, socket) => {
      const msg = Buffer.from("disk on fire");
      const payload = Buffer.alloc(6 + msg.length);
      payload.writeUInt32BE(5, 0);
      payload.writeUInt16BE(msg.length, 4);
      msg.copy(payload, 6);
      socket.write(chunk(cookie, NBD_REPLY_FLAG_DONE, 0x8001, payload));
    });
    const { source } = await open(server.url, { retries: 1 });
    await expect(source.read(0, 1)).rejects.toMatchObject({ code: "io", message: /EIO.*disk on fire/ });
  });

  it("falls back to NBD_OPT_EXPORT_NAME when NBD_OPT_GO is not supported", async () => {
    const server = await startFakeNbd({
      size: 8192,
      structured: true,
      noGo: true,
      onRead: ({ cookie, offset, length }, socket) =>
        socket.write(dataChunk(cookie, NBD_REPLY_FLAG_DONE, offset, Buffer.alloc(length, offset / 512))),
    });
    cleanups.push(() => server.close());
    const { source } = await open(server.url);
    expect(source.info.legacyExportName).toBe(true);
    expect(source.sectors).toBe(16);
    expect((await source.read(5, 1)).every((b) => b === 5)).toBe(true);
  });

  it("a server that requires TLS is a clear configuration error", async () => {
    const server = await startFakeNbd({
      size: 4096,
      structured: true,
      goError: 0x80000005,
      onRead: () => {},
    });
    cleanups.push(() => server.close());
    await expect(NbdSource.open(server.url)).rejects.toMatchObject({
      code: "config",
      message: /requires TLS/,
    });
  });

  it("an oldstyle server is a clear configuration error", async () => {
    const server = await startFakeNbd({ size: 4096, structured: true, oldstyle: true, onRead: () => {} });
    cleanups.push(() => server.close());
    await expect(NbdSource.open(server.url)).rejects.toMatchObject({ code: "config", message: /oldstyle/ });
  });
});

describe("NBD close", () => {
  it("sends NBD_CMD_DISC (a soft disconnect)", async () => {
    const server = await startFakeNbd({
      size: 65536,
      structured: false,
      onRead: ({ cookie, length }, socket) => socket.write(simpleReply(cookie, 0, Buffer.alloc(length, 9))),
    });
    cleanups.push(() => server.close());
    const source = await NbdSource.open(server.url);
    expect((await source.read(1, 2)).every((b) => b === 9)).toBe(true);
    expect(server.discs).toBe(0);
    await source.close();
    expect(server.discs).toBe(1);
  });

  it("rejects reads in flight with BlockError closed and is idempotent", async () => {
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["delay"],
      filterArgs: ["rdelay=300ms"],
    });
    const { source } = await open(server.url());
    const pending = source.read(0, 8).catch((e: unknown) => e);
    await sleep(50);
    await Promise.all([source.close(), source.close()]);
    expect(await pending).toMatchObject({ code: "closed" });
    await expect(source.read(0, 8)).rejects.toMatchObject({ code: "closed" });
    await source.close();
  });
});
