/**
 * `medic deploy` killed with SIGKILL at random moments and started again until it finishes: the
 * bitmap only ever grows and only marks blocks that are really on the disk, every resumed run
 * starts from what the bitmap said, the runs together fetch little more than the image once, and
 * the final disk verifies. Plus the one-line errors of the command (no stack traces).
 *
 * The image is served over HTTP by this test, so the bytes every run fetched (killed ones too)
 * are counted at the server. Set KILL_SEED to replay other kill moments.
 */
import { mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mulberry32 } from "../../runtime/guest/workloads.ts";
import { runMedic, startMedic } from "../medic-cli.ts";

const MiB = 1024 * 1024;
/**
 * The engine makes blocks durable (flush, then bitmap) every 64 MiB of local writes while the copy
 * streams (--flush-every-mib 64; and at least every second, ~48 MiB at this link's 400 Mbit/s), so
 * the image spans four or more such windows.
 */
const IMAGE_BYTES = 256 * MiB;
const FLUSH_WINDOW = 64 * MiB;
const BLOCK_BYTES = 64 * 1024; // the deploy default
const SEED = process.env.KILL_SEED === undefined ? 20240611 : Number(process.env.KILL_SEED);
/**
 * A kill loses what was fetched but not yet durable: at most one flush window of written blocks,
 * the fetched blocks cached meanwhile (the copy goes on while a flush syncs; maxCachedBytes, 16 MiB)
 * and the fetches in flight (fetchDepth x fetchBlocks = 8 x 16 blocks).
 */
const WASTE_PER_KILL = FLUSH_WINDOW + 16 * MiB + 8 * 16 * BLOCK_BYTES;

let dir: string;
let image: Buffer;
let imagePath: string;

/** Deterministic noise: neither zeros nor the lba pattern. */
function noise(bytes: number, seed: number): Buffer {
  const next = mulberry32(seed);
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) out.writeUInt32LE(Math.floor(next() * 2 ** 32), i);
  return out;
}

// ---- an HTTP image server that counts what it sends -------------------------------------------------

interface ImageServer {
  readonly url: string;
  /** Bytes of image data sent so far. */
  served(): number;
  close(): Promise<void>;
}

async function serveImage(data: Buffer): Promise<ImageServer> {
  let served = 0;
  const headers = { "accept-ranges": "bytes", etag: '"medic-kill-resume"' };
  const server = http.createServer((req, res) => {
    if (req.url !== "/image.raw") {
      res.writeHead(404).end();
      return;
    }
    if (req.method === "HEAD") {
      res.writeHead(200, { ...headers, "content-length": data.length }).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
    if (!m) {
      res.writeHead(416, headers).end();
      return;
    }
    const start = Number(m[1]);
    const end = Math.min(Number(m[2]), data.length - 1);
    served += end - start + 1;
    res
      .writeHead(206, {
        ...headers,
        "content-range": `bytes ${start}-${end}/${data.length}`,
        "content-length": end - start + 1,
      })
      .end(data.subarray(start, end + 1));
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/image.raw`,
    served: () => served,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---- running medic -------------------------------------------------------------------------------------

const start = startMedic;
const medic = (args: readonly string[]) => runMedic(args);

// ---- the bitmap file (runtime/deploy/bitmap.ts) ---------------------------------------------------------

interface BitmapFile {
  readonly blockBytes: number;
  readonly sectors: number;
  readonly image: string;
  readonly bits: Uint8Array;
  readonly blocks: number;
  readonly local: number;
}

async function readBitmap(path: string): Promise<BitmapFile | null> {
  let text: Buffer;
  try {
    text = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  const newline = text.indexOf(0x0a);
  const header = text.subarray(0, newline).toString("utf8");
  const m = /^medic-bitmap v1 block_bytes=(\d+) sectors=(\d+) image=(\S*)$/.exec(header);
  if (!m) throw new Error(`${path}: unexpected bitmap header ${JSON.stringify(header)}`);
  const blockBytes = Number(m[1]);
  const sectors = Number(m[2]);
  const blocks = Math.ceil((sectors * 512) / blockBytes);
  const bits = new Uint8Array(text.subarray(newline + 1));
  expect(bits.length, "bitmap length").toBe(Math.ceil(blocks / 8));
  let local = 0;
  for (let b = 0; b < blocks; b++) if ((bits[b >>> 3]! & (1 << (b & 7))) !== 0) local++;
  return { blockBytes, sectors, image: decodeURIComponent(m[3]!), bits, blocks, local };
}

const has = (map: BitmapFile, block: number) => (map.bits[block >>> 3]! & (1 << (block & 7))) !== 0;

/** Every block the bitmap calls local holds the image's bytes on the disk. */
async function checkMarkedBlocks(map: BitmapFile, diskPath: string): Promise<void> {
  const bad: number[] = [];
  const handle = await open(diskPath, "r");
  try {
    const chunk = Buffer.alloc(map.blockBytes);
    for (let b = 0; b < map.blocks; b++) {
      if (!has(map, b)) continue;
      const from = b * map.blockBytes;
      const length = Math.min(map.blockBytes, IMAGE_BYTES - from);
      const { bytesRead } = await handle.read(chunk, 0, length, from);
      if (
        bytesRead !== length ||
        Buffer.compare(chunk.subarray(0, length), image.subarray(from, from + length)) !== 0
      )
        bad.push(b);
    }
  } finally {
    await handle.close();
  }
  expect(bad, "blocks the bitmap marks local but whose data is not on the disk").toEqual([]);
}

function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split("\n");
  expect(lines, `stderr:\n${stderr}`).toHaveLength(1);
  expect(stderr).not.toContain("    at ");
  return lines[0]!;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "medic-kill-resume-"));
  image = noise(IMAGE_BYTES, 0x5eed);
  imagePath = join(dir, "image.raw");
  await writeFile(imagePath, image);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("medic deploy killed and resumed", () => {
  it("SIGKILLed at random moments, resumes from its bitmap, refetches little, and verifies at the end", async () => {
    const server = await serveImage(image);
    const disk = join(dir, "disk.raw");
    const bitmapPath = `${disk}.medic-bitmap`;
    const args = [
      "deploy",
      "--image",
      server.url,
      "--disk",
      disk,
      "--workload",
      "none",
      "--link-mbps",
      "400",
      "--flush-every-mib",
      String(FLUSH_WINDOW / MiB),
    ];
    const random = mulberry32(SEED);
    const log: string[] = [`seed ${SEED}`];
    try {
      let previous: BitmapFile | null = null;
      const kills = 3;
      for (let round = 0; round < kills; round++) {
        const servedBefore = server.served();
        // Killed once this run has fetched 72..160 MiB (past a flush window), but well before its
        // end, plus up to 300 ms.
        const remaining = IMAGE_BYTES - (previous?.local ?? 0) * BLOCK_BYTES;
        const wanted = (72 + Math.floor(random() * 88)) * MiB;
        const threshold = servedBefore + Math.min(wanted, remaining - 40 * MiB);
        const extraMs = Math.floor(random() * 300);
        const { child, done } = start(args);
        const started = Date.now();
        while (server.served() < threshold && child.exitCode === null && Date.now() - started < 20_000) {
          await new Promise((r) => setTimeout(r, 5));
        }
        await new Promise((r) => setTimeout(r, extraMs));
        child.kill("SIGKILL");
        const run = await done;
        expect(run.signal, `round ${round} ended on its own before the kill: ${run.stderr}`).toBe("SIGKILL");
        const map = await readBitmap(bitmapPath);
        const local = map?.local ?? 0;
        const fetched = server.served() - servedBefore;
        log.push(
          `kill ${round}: after ${fetched} bytes fetched, ${local} blocks local (lost ${fetched - (local - (previous?.local ?? 0)) * BLOCK_BYTES} bytes)`,
        );
        if (map) {
          expect(map.blockBytes).toBe(BLOCK_BYTES);
          expect(map.sectors).toBe(IMAGE_BYTES / 512);
          await checkMarkedBlocks(map, disk);
        }
        if (previous) {
          expect(map, "the bitmap survives the kill").not.toBeNull();
          const lost: number[] = [];
          for (let b = 0; b < previous.blocks; b++) if (has(previous, b) && !has(map!, b)) lost.push(b);
          expect(lost, "blocks the bitmap forgot").toEqual([]);
        }
        // What this run fetched beyond what it made durable: at most the fetches in flight and
        // the unflushed window at the moment of the kill.
        const gained = (local - (previous?.local ?? 0)) * BLOCK_BYTES;
        expect(fetched - gained, `round ${round}: bytes fetched but lost to the kill`).toBeLessThanOrEqual(
          WASTE_PER_KILL,
        );
        previous = map;
      }
      expect(previous, "some progress before the last kill").not.toBeNull();
      expect(previous!.local).toBeGreaterThan(0);
      expect(previous!.local).toBeLessThan(previous!.blocks);

      // The final run: to the end, then --verify.
      const servedBefore = server.served();
      const final = await medic([...args, "--json", "--verify"]);
      expect(final.code, `final run: ${final.stderr}`).toBe(0);
      const summary = JSON.parse(final.stdout) as Record<string, unknown>;
      log.push(`final: ${JSON.stringify(summary)}`);
      expect(summary.verified).toBe(true);
      expect(summary.resumed).toBe(true);
      expect(summary.image_bytes).toBe(IMAGE_BYTES);
      const localAtStart = summary.local_bytes_at_start as number;
      expect(
        localAtStart,
        "local_bytes_at_start against the bitmap left by the last kill",
      ).toBeGreaterThanOrEqual(previous!.local * BLOCK_BYTES);
      // Only what was not yet local is fetched again.
      expect(summary.bytes_fetched).toBeLessThanOrEqual(IMAGE_BYTES - localAtStart);
      // The server saw the same, plus --verify's read of the whole image.
      expect(server.served() - servedBefore).toBe((summary.bytes_fetched as number) + IMAGE_BYTES);
      const total = servedBefore + (summary.bytes_fetched as number);
      log.push(`fetched by all runs: ${total} bytes for a ${IMAGE_BYTES}-byte image`);
      expect(total, "bytes fetched over every run").toBeLessThanOrEqual(IMAGE_BYTES + kills * WASTE_PER_KILL);
      const whole = await readFile(disk);
      expect(whole.length).toBe(IMAGE_BYTES);
      expect(Buffer.compare(whole, image), "the disk equals the image").toBe(0);
      const done = await readBitmap(bitmapPath);
      expect(done!.local).toBe(done!.blocks);
      // Run again on a complete disk: nothing to fetch, still verified.
      console.info(log.join("\n"));
      const again = await medic([...args, "--json", "--verify"]);
      expect(again.code, again.stderr).toBe(0);
      const second = JSON.parse(again.stdout) as Record<string, unknown>;
      expect(second.bytes_fetched).toBe(0);
      expect(second.resumed).toBe(true);
      expect(second.local_bytes_at_start).toBe(IMAGE_BYTES);
      expect(second.verified).toBe(true);
    } catch (error) {
      throw new Error(`${error instanceof Error ? error.message : String(error)}\n${log.join("\n")}`, {
        cause: error,
      });
    } finally {
      await server.close();
    }
  }, 90_000);

  it("refuses to resume from a bitmap made for another image, naming the bitmap file", async () => {
    const other = join(dir, "other.raw");
    await writeFile(other, noise(8 * MiB, 77));
    const disk = join(dir, "reused.raw");
    const first = await medic(["deploy", "--image", other, "--disk", disk, "--workload", "none", "--json"]);
    expect(first.code, first.stderr).toBe(0);
    // The disk is big enough for the real image now; only the bitmap is wrong.
    await truncate(disk, IMAGE_BYTES);
    const run = await medic(["deploy", "--image", imagePath, "--disk", disk, "--workload", "none", "--json"]);
    expect(run.code).toBe(1);
    const line = oneLine(run.stderr);
    expect(line).toContain(`${disk}.medic-bitmap`);
    expect(line).toMatch(/another deployment/);
    expect(run.stdout).toBe("");
    // Nothing was written over the other image's blocks.
    expect((await readBitmap(`${disk}.medic-bitmap`))!.image).toContain(other);
  }, 30_000);

  it("a missing image: exit 1, one line naming it", async () => {
    const missing = join(dir, "no-such-image.raw");
    const run = await medic([
      "deploy",
      "--image",
      missing,
      "--disk",
      join(dir, "d1.raw"),
      "--workload",
      "none",
    ]);
    expect(run.code).not.toBe(0);
    const line = oneLine(run.stderr);
    expect(line).toContain(missing);
    expect(line).toMatch(/no such file/);
  });

  it("a disk smaller than the image: exit non-zero, one line with both sizes", async () => {
    const small = join(dir, "small.raw");
    await writeFile(small, Buffer.alloc(MiB));
    const run = await medic(["deploy", "--image", imagePath, "--disk", small, "--workload", "none"]);
    expect(run.code).not.toBe(0);
    const line = oneLine(run.stderr);
    expect(line).toContain(small);
    expect(line).toContain(String(MiB));
    expect(line).toContain(String(IMAGE_BYTES));
    // The small disk is left alone.
    expect((await stat(small)).size).toBe(MiB);
  });

  it("a disk path that is a directory: exit non-zero, one line", async () => {
    const directory = join(dir, "a-directory");
    await mkdir(directory, { recursive: true });
    const run = await medic(["deploy", "--image", imagePath, "--disk", directory, "--workload", "none"]);
    expect(run.code).not.toBe(0);
    const line = oneLine(run.stderr);
    expect(line).toContain(directory);
  });

  it("a bad option value (--link-mbps abc): exit non-zero, one line naming the option", async () => {
    const run = await medic([
      "deploy",
      "--image",
      imagePath,
      "--disk",
      join(dir, "d2.raw"),
      "--workload",
      "none",
      "--link-mbps",
      "abc",
    ]);
    expect(run.code).not.toBe(0);
    const line = oneLine(run.stderr);
    expect(line).toContain("--link-mbps");
    expect(line).toContain("abc");
  });
});
