/**
 * `medic deploy --manifest` against a real NBD server: every fetched block is checked against the
 * manifest; a block that does not match is fetched again (it alone: the rest of its read is kept),
 * then the deployment stops with a clear line and never marks that block local. And an image smaller than the local disk is refused
 * unless --allow-larger-disk says to keep the disk's tail.
 */
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runMedic } from "../medic-cli.ts";
import { makeRandomImage, makeTempDir, NbdkitServer, removeDir } from "../sources/servers.ts";

const MiB = 1024 * 1024;
const IMAGE_BYTES = 8 * MiB;
const BLOCK = 64 * 1024;
const BAD_BLOCK = 37;

let dir: string;
let imagePath: string;
let image: Buffer;
let server: NbdkitServer;
let goodManifest: string;

beforeAll(async () => {
  dir = await makeTempDir("medic-manifest-deploy-");
  imagePath = join(dir, "image.raw");
  image = await makeRandomImage(imagePath, IMAGE_BYTES);
  server = await NbdkitServer.start(dir, { plugin: "file", pluginArgs: [`file=${imagePath}`] });
  const built = await medic(["manifest", imagePath, "--block-size", String(BLOCK)]);
  expect(built.code, built.stderr).toBe(0);
  goodManifest = built.stdout;
});

afterAll(async () => {
  await server?.stop();
  await removeDir(dir);
});

const medic = (args: readonly string[]) => runMedic(args);

/** The blocks the bitmap beside `disk` marks local. */
async function markedBlocks(disk: string): Promise<Set<number>> {
  const file = await readFile(`${disk}.medic-bitmap`);
  const bits = file.subarray(file.indexOf(0x0a) + 1);
  const marked = new Set<number>();
  for (let b = 0; b < IMAGE_BYTES / BLOCK; b++) if ((bits[b >>> 3]! & (1 << (b & 7))) !== 0) marked.add(b);
  return marked;
}

describe("medic deploy --manifest", () => {
  it("with the image's own manifest: every block checks, the disk verifies", async () => {
    const manifest = join(dir, "good.manifest");
    await writeFile(manifest, goodManifest);
    const disk = join(dir, "good.disk");
    const run = await medic([
      ...["deploy", "--image", server.url(), "--disk", disk, "--workload", "none"],
      ...["--manifest", manifest, "--verify", "--json"],
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).verified).toBe(true);
    expect(Buffer.compare(await readFile(disk), image)).toBe(0);
  }, 60_000);

  it("a block that does not match: only it is fetched again, then one clear line; its neighbours land, it never does", async () => {
    // The manifest of a slightly different image: one block's digest is not the served block's.
    const lines = goodManifest.trimEnd().split("\n");
    const digest = lines[1 + BAD_BLOCK]!;
    lines[1 + BAD_BLOCK] = digest.replace(/^./, (c) => (c === "0" ? "1" : "0"));
    const manifest = join(dir, "bad.manifest");
    await writeFile(manifest, `${lines.join("\n")}\n`);
    // A server of its own that logs every request (nbdkit's log filter).
    const log = join(dir, "requests.log");
    const logged = await NbdkitServer.start(dir, {
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["log"],
      filterArgs: [`logfile=${log}`],
    });
    const disk = join(dir, "bad.disk");
    let run: Awaited<ReturnType<typeof medic>>;
    try {
      run = await medic([
        ...["deploy", "--image", logged.url(), "--disk", disk, "--workload", "none"],
        ...["--manifest", manifest, "--retries", "2", "--give-up-after", "1"],
      ]);
    } finally {
      await logged.stop();
    }
    expect(run.code).toBe(1);
    // Fetched again before the deployment gave up on it.
    expect(run.stderr).toMatch(
      new RegExp(`failed \\(attempt 2\\): block ${BAD_BLOCK} does not match the manifest`),
    );
    expect(run.stderr).toMatch(/gave up after 1 s paused/);
    expect(run.stderr).not.toMatch(/\n\s+at /); // no stack trace
    // The bad block came first in a read of several blocks; every read of it after that was of it alone.
    const reads = [
      ...(await readFile(log, "utf8")).matchAll(/ Read id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)/g),
    ]
      .map((m) => ({ offset: Number(m[1]), count: Number(m[2]) }))
      .filter((r) => r.offset <= BAD_BLOCK * BLOCK && BAD_BLOCK * BLOCK < r.offset + r.count);
    expect(reads.length).toBeGreaterThanOrEqual(3);
    expect(reads[0]!.count).toBeGreaterThan(BLOCK);
    for (const r of reads.slice(1)) expect(r).toEqual({ offset: BAD_BLOCK * BLOCK, count: BLOCK });
    // Every block the bitmap marks holds the image's data; the mismatching one is not among them,
    // its neighbours from the same read are.
    const marked = await markedBlocks(disk);
    expect(marked.has(BAD_BLOCK)).toBe(false);
    expect(marked.has(BAD_BLOCK - 1)).toBe(true);
    expect(marked.has(BAD_BLOCK + 1)).toBe(true);
    const data = await readFile(disk);
    for (const b of marked) {
      expect(
        Buffer.compare(data.subarray(b * BLOCK, (b + 1) * BLOCK), image.subarray(b * BLOCK, (b + 1) * BLOCK)),
      ).toBe(0);
    }
  }, 60_000);
});

describe("an image smaller than the local disk", () => {
  it("is refused with one line giving both sizes, and the disk is left alone", async () => {
    const disk = join(dir, "big.disk");
    await writeFile(disk, Buffer.alloc(IMAGE_BYTES + MiB, 0x5a));
    const run = await medic(["deploy", "--image", server.url(), "--disk", disk, "--workload", "none"]);
    expect(run.code).not.toBe(0);
    const lines = run.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(String(IMAGE_BYTES));
    expect(lines[0]).toContain(String(IMAGE_BYTES + MiB));
    expect((await stat(disk)).size).toBe(IMAGE_BYTES + MiB);
    expect((await readFile(disk)).every((byte) => byte === 0x5a)).toBe(true);
  });

  it("with --allow-larger-disk: the image lands, the disk's tail beyond it is kept", async () => {
    const disk = join(dir, "bigger.disk");
    await writeFile(disk, Buffer.alloc(IMAGE_BYTES + MiB, 0x5a));
    const run = await medic([
      ...["deploy", "--image", server.url(), "--disk", disk, "--workload", "none"],
      ...["--allow-larger-disk", "--verify", "--json"],
    ]);
    expect(run.code, run.stderr).toBe(0);
    const data = await readFile(disk);
    expect(Buffer.compare(data.subarray(0, IMAGE_BYTES), image)).toBe(0);
    expect(data.subarray(IMAGE_BYTES).every((byte) => byte === 0x5a)).toBe(true);
  }, 60_000);
});
