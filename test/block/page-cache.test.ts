import { execFileSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileBackend } from "../../runtime/block/file.ts";
import { dropPages } from "../../runtime/block/page-cache.ts";
import { SECTOR_SIZE } from "../../runtime/block/types.ts";

const MiB = 1024 * 1024;
let dir: string;

// On the checkout's own file system (a real disk, as a deployment's), not a tmpfs /tmp: tmpfs pages
// are the file itself and cannot be dropped.
beforeAll(async () => {
  await mkdir(".cache", { recursive: true });
  dir = await mkdtemp(join(".cache", "page-cache-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Bytes of the file in the page cache, as util-linux's fincore reports them. */
function residentBytes(path: string): number {
  return Number(
    execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], { encoding: "utf8" }),
  );
}

/** Writes `total` random bytes in 1 MiB writes, flushes, and returns what was written. */
async function fill(disk: FileBackend, total: number): Promise<Buffer> {
  const all = Buffer.alloc(total);
  randomFillSync(all);
  for (let at = 0; at < total; at += MiB) await disk.write(at / SECTOR_SIZE, all.subarray(at, at + MiB));
  await disk.flush();
  return all;
}

describe("the local disk's page cache", () => {
  it("the native helper is built (npm install builds native/page_cache.c)", () => {
    expect(dropPages).not.toBeNull();
  });

  it("pages written back are dropped, and the data is intact", async () => {
    const path = join(dir, "dropped.img");
    const disk = await FileBackend.open(path, {
      writable: true,
      create: true,
      sectors: (32 * MiB) / SECTOR_SIZE,
      writebackBytes: 4 * MiB,
    });
    const written = await fill(disk, 32 * MiB);
    // Only what the last background sync had not covered may still be cached, then the flush drops it.
    expect(residentBytes(path)).toBeLessThan(4 * MiB);
    await disk.close();
    expect((await readFile(path)).equals(written)).toBe(true);
  });

  it("with write-back off, the written pages stay cached (the control)", async () => {
    const path = join(dir, "kept.img");
    const disk = await FileBackend.open(path, {
      writable: true,
      create: true,
      sectors: (32 * MiB) / SECTOR_SIZE,
      writebackBytes: 0,
    });
    await fill(disk, 32 * MiB);
    expect(residentBytes(path)).toBeGreaterThan(24 * MiB);
    await disk.close();
  });
});
