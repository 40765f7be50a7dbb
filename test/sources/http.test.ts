import { randomBytes } from "node:crypto";
import { readFile, rename, utimes, writeFile } from "node:fs/promises";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockError } from "../../runtime/block/types.ts";
import { type HttpOptions, HttpSource } from "../../runtime/sources/http.ts";
import type { SourceEvent } from "../../runtime/sources/options.ts";
import {
  execFileAsync,
  makeRandomImage,
  makeTempDir,
  NginxServer,
  removeDir,
  requireTool,
} from "./servers.ts";

const IMAGE_BYTES = 8 * 1024 * 1024;
const SECTORS = IMAGE_BYTES / 512;

let dir: string;
let nginx: NginxServer;
let image: Buffer;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  dir = await makeTempDir("medic-http-");
  nginx = await NginxServer.start(join(dir, "nginx"));
  image = await makeRandomImage(join(nginx.www, "disk.img"), IMAGE_BYTES);
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  await nginx?.stop();
  await removeDir(dir);
});

async function open(
  url: string,
  options: HttpOptions = {},
): Promise<{ source: HttpSource; events: SourceEvent[] }> {
  const events: SourceEvent[] = [];
  const source = await HttpSource.open(url, {
    retryDelayMs: 20,
    maxRetryDelayMs: 200,
    ...options,
    onEvent: (e) => events.push(e),
  });
  cleanups.push(() => source.close());
  return { source, events };
}

const expected = (lba: number, count: number, data = image) => data.subarray(lba * 512, (lba + count) * 512);

function* positions(n: number, maxCount: number, sectors: number, seed = 3): Generator<[number, number]> {
  let x = seed;
  const next = () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x;
  };
  for (let i = 0; i < n; i++) {
    const count = 1 + (next() % maxCount);
    yield [next() % (sectors - count + 1), count];
  }
}

/** Replaces `name` in nginx's root atomically, with an mtime (and so ETag) that surely differs. */
async function replaceImage(name: string, data: Buffer, mtimeShiftS: number): Promise<void> {
  const tmp = join(nginx.www, `.${name}.new`);
  await writeFile(tmp, data);
  const when = new Date(Date.now() + mtimeShiftS * 1000);
  await utimes(tmp, when, when);
  await rename(tmp, join(nginx.www, name));
}

describe("HTTP source against nginx", () => {
  it("size and validator from HEAD; reads equal the file", async () => {
    const { source } = await open(nginx.url("disk.img"));
    expect(source.sectors).toBe(SECTORS);
    expect(source.validator.etag).toMatch(/^"[0-9a-f]+-[0-9a-f]+"$/);
    expect(source.description).toBe(nginx.url("disk.img"));
    for (const [lba, count] of positions(100, 3000, SECTORS)) {
      if (!Buffer.from(await source.read(lba, count)).equals(expected(lba, count))) {
        throw new Error(`mismatch at ${lba}+${count}`);
      }
    }
    expect(Buffer.from(await source.read(0, SECTORS)).equals(image)).toBe(true);
    await expect(source.read(SECTORS, 1)).rejects.toMatchObject({ code: "range" });
    const log = nginx.accessLog().filter((l) => l.method === "GET" && l.range !== "-");
    expect(log.every((l) => l.status === 206)).toBe(true);
  });

  it("keeps several ranges in flight on reused keep-alive connections", async () => {
    const before = nginx.accessLog().length;
    const { source } = await open(nginx.url("disk.img"), { maxInFlight: 6, maxRequestBytes: 64 * 1024 });
    const reads = [...positions(300, 256, SECTORS, 11)].map(async ([lba, count]) =>
      Buffer.from(await source.read(lba, count)).equals(expected(lba, count)),
    );
    expect((await Promise.all(reads)).every(Boolean)).toBe(true);
    const log = nginx
      .accessLog()
      .slice(before)
      .filter((l) => l.method === "GET");
    const connections = new Set(log.map((l) => l.connection));
    expect(log.length).toBeGreaterThanOrEqual(300);
    expect(connections.size).toBeGreaterThan(1); // ranges in parallel
    expect(connections.size).toBeLessThanOrEqual(6); // never more than maxInFlight
    expect(Math.max(...log.map((l) => l.request))).toBeGreaterThan(10); // keep-alive reuse
  });

  it("splits large reads into several ranges", async () => {
    const { source } = await open(nginx.url("disk.img"), { maxRequestBytes: 1024 * 1024 });
    const got = await source.read(7, 2048 * 5);
    expect(Buffer.from(got).equals(expected(7, 2048 * 5))).toBe(true);
    expect(source.stats.requests).toBe(5);
  });

  it("falls back to a bytes=0-0 probe when HEAD is refused", async () => {
    const { source } = await open(nginx.url("nohead/disk.img"));
    expect(source.sectors).toBe(SECTORS);
    expect(source.validator.etag).toBeDefined();
    expect(Buffer.from(await source.read(100, 50)).equals(expected(100, 50))).toBe(true);
  });

  it("a server that ignores Range (200 OK) is a protocol error, not silently accepted", async () => {
    const { source } = await open(nginx.url("norange/disk.img"));
    const error = await source.read(8, 8).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "protocol" });
    expect((error as Error).message).toMatch(/ignored the Range request/);
  });

  it("a missing image is a clear error at open", async () => {
    await expect(HttpSource.open(nginx.url("nope.img"))).rejects.toMatchObject({
      code: "config",
      message: /not found on the server \(HTTP 404\)/,
    });
  });

  it("an image whose size is not a multiple of 512 is refused", async () => {
    await writeFile(join(nginx.www, "odd.img"), randomBytes(1000));
    await expect(HttpSource.open(nginx.url("odd.img"))).rejects.toMatchObject({
      code: "config",
      message: /1000 bytes is not a multiple of 512/,
    });
  });

  it("the file replaced on the server mid-session: BlockError changed, never mixed data", async () => {
    const original = randomBytes(IMAGE_BYTES);
    await replaceImage("swap.img", original, -100);
    const { source } = await open(nginx.url("swap.img"));
    expect(Buffer.from(await source.read(0, 64)).equals(original.subarray(0, 64 * 512))).toBe(true);
    await replaceImage("swap.img", randomBytes(IMAGE_BYTES), 0); // same size, new content and mtime
    const error = await source.read(0, 64).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "changed" });
    expect((error as Error).message).toMatch(/image changed on the server since the deployment started/);
    // And it stays refused, even for ranges that would now succeed.
    await expect(source.read(100, 1)).rejects.toMatchObject({ code: "changed" });
  });

  it("the file replaced, with Last-Modified as the only validator", async () => {
    const original = randomBytes(IMAGE_BYTES);
    await replaceImage("swap2.img", original, -100);
    const { source } = await open(nginx.url("noetag/swap2.img"));
    expect(source.validator.etag).toBeUndefined();
    expect(source.validator.lastModified).toBeDefined();
    expect(Buffer.from(await source.read(5, 5)).equals(original.subarray(5 * 512, 10 * 512))).toBe(true);
    await replaceImage("swap2.img", randomBytes(IMAGE_BYTES), 0);
    await expect(source.read(5, 5)).rejects.toMatchObject({ code: "changed" });
  });

  it("nginx stopped and restarted: the read is retried and succeeds", async () => {
    const { source, events } = await open(nginx.url("disk.img"), { retries: 12, retryDelayMs: 50 });
    expect(Buffer.from(await source.read(0, 8)).equals(expected(0, 8))).toBe(true);
    await nginx.stop();
    const pending = source.read(1000, 300).then((got) => Buffer.from(got).equals(expected(1000, 300)));
    await new Promise((r) => setTimeout(r, 400));
    await nginx.launch();
    expect(await pending).toBe(true);
    expect(events.filter((e) => e.kind === "retry").length).toBeGreaterThan(0);
    expect(source.stats.retries).toBeGreaterThan(0);
  });

  it("gives up with BlockError io when the server stays down", async () => {
    const { source } = await open(nginx.url("disk.img"), { retries: 2, retryDelayMs: 10 });
    await nginx.stop();
    try {
      const error = await source.read(0, 8).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "io", message: /failed after 3 attempts.*ECONNREFUSED/ });
    } finally {
      await nginx.launch();
    }
  });
});

describe("HTTPS", () => {
  it("reads over TLS from nginx with a private CA", async () => {
    const openssl = requireTool("openssl");
    const tlsDir = join(dir, "tls");
    const ngDir = join(dir, "nginx-tls");
    await execFileAsync("mkdir", ["-p", tlsDir]);
    await execFileAsync(openssl, [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-keyout",
      join(tlsDir, "key.pem"),
      "-out",
      join(tlsDir, "cert.pem"),
    ]);
    const server = await NginxServer.start(ngDir, {
      tls: { cert: join(tlsDir, "cert.pem"), key: join(tlsDir, "key.pem") },
    });
    cleanups.push(() => server.stop());
    await writeFile(join(server.www, "disk.img"), image);
    // Without the CA the certificate is refused, clearly.
    await expect(HttpSource.open(server.url("disk.img"), { retries: 0 })).rejects.toMatchObject({
      code: "config",
      message: /TLS/,
    });
    const ca = await readFile(join(tlsDir, "cert.pem"));
    const { source } = await open(server.url("disk.img"), { tls: { ca } });
    expect(source.sectors).toBe(SECTORS);
    for (const [lba, count] of positions(30, 2000, SECTORS)) {
      expect(Buffer.from(await source.read(lba, count)).equals(expected(lba, count))).toBe(true);
    }
  });
});

describe("HTTP misbehaviour (a deliberately broken server)", () => {
  async function fakeServer(handler: http.RequestListener): Promise<string> {
    const sockets = new Set<net.Socket>();
    const server = http.createServer(handler);
    server.on("connection", (s) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          server.close(() => r());
        }),
    );
    return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/disk.img`;
  }

  function serveRange(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    cut: (length: number) => number,
  ): void {
    const size = 64 * 1024;
    if (req.method === "HEAD") {
      res.writeHead(200, { "content-length": size, etag: '"v1"', "accept-ranges": "bytes" });
      res.end();
      return;
    }
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? "")!;
    const a = Number(m[1]);
    const b = Number(m[2]);
    const body = Buffer.alloc(b - a + 1, 7);
    res.writeHead(206, {
      "content-length": body.length,
      "content-range": `bytes ${a}-${b}/${size}`,
      etag: '"v1"',
    });
    const n = cut(body.length);
    if (n >= body.length) res.end(body);
    else {
      res.write(body.subarray(0, n));
      setTimeout(() => res.socket?.destroy(), 10);
    }
  }

  it("a body cut short is retried, then reported as short-read", async () => {
    const url = await fakeServer((req, res) => serveRange(req, res, (len) => len / 2));
    const { source, events } = await open(url, { retries: 2 });
    const error = await source.read(0, 16).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "short-read" });
    expect((error as Error).message).toMatch(/4096 of 8192 bytes|body cut after 4096/);
    expect(events.filter((e) => e.kind === "retry")).toHaveLength(2);
  });

  it("a body cut short once is retried successfully", async () => {
    let calls = 0;
    const url = await fakeServer((req, res) =>
      serveRange(req, res, (len) => (req.method === "GET" && calls++ === 0 ? 100 : len)),
    );
    const { source } = await open(url, { retries: 2 });
    const got = await source.read(0, 16);
    expect(got.every((b) => b === 7)).toBe(true);
    expect(source.stats.retries).toBe(1);
  });

  it("a 503 is retried; a wrong Content-Range is a protocol error", async () => {
    let calls = 0;
    const url = await fakeServer((req, res) => {
      if (req.method === "GET" && calls++ < 2) {
        res.writeHead(503);
        res.end();
        return;
      }
      if (req.method === "GET" && req.headers.range === "bytes=512-1023") {
        res.writeHead(206, { "content-length": 512, "content-range": "bytes 0-511/65536", etag: '"v1"' });
        res.end(Buffer.alloc(512));
        return;
      }
      serveRange(req, res, (len) => len);
    });
    const { source } = await open(url, { retries: 3 });
    expect((await source.read(4, 4)).length).toBe(2048);
    expect(source.stats.retries).toBe(2);
    await expect(source.read(1, 1)).rejects.toMatchObject({ code: "protocol", message: /sent 0-511/ });
  });
});
