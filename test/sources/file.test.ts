import { randomBytes } from "node:crypto";
import { truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockError } from "../../runtime/block/types.ts";
import { FileSource } from "../../runtime/sources/file.ts";
import { makeRandomImage, makeTempDir, removeDir } from "./servers.ts";

let dir: string;
let image: Buffer;
let path: string;

beforeAll(async () => {
  dir = await makeTempDir("medic-file-");
  path = join(dir, "disk.img");
  image = await makeRandomImage(path, 1024 * 1024);
});

afterAll(async () => {
  await removeDir(dir);
});

describe("FileSource", () => {
  it("reads sectors equal to the file", async () => {
    const source = await FileSource.open(path);
    try {
      expect(source.sectors).toBe(2048);
      expect(source.description).toBe(`file ${path}`);
      for (const [lba, count] of [
        [0, 1],
        [1, 7],
        [100, 900],
        [2047, 1],
        [0, 2048],
      ] as const) {
        const got = await source.read(lba, count);
        expect(got).toBeInstanceOf(Uint8Array);
        expect(Buffer.from(got).equals(image.subarray(lba * 512, (lba + count) * 512))).toBe(true);
      }
      const [a, b] = await Promise.all([source.read(3, 3), source.read(3, 3)]);
      expect(a).not.toBe(b); // fresh buffers
      await expect(source.read(2047, 2)).rejects.toMatchObject({ code: "range" });
      await expect(source.read(-1, 1)).rejects.toMatchObject({ code: "range" });
    } finally {
      await source.close();
    }
  });

  it("reads into the caller's buffer at an offset, touching nothing around it", async () => {
    const source = await FileSource.open(path);
    try {
      const target = new Uint8Array(10 * 512).fill(0xee);
      await source.readInto!(100, 8, target, 512);
      const got = Buffer.from(target.subarray(512, 9 * 512));
      expect(got.equals(image.subarray(100 * 512, 108 * 512))).toBe(true);
      expect(target.subarray(0, 512).every((b) => b === 0xee)).toBe(true);
      expect(target.subarray(9 * 512).every((b) => b === 0xee)).toBe(true);
      await expect(source.readInto!(0, 11, target)).rejects.toMatchObject({ code: "range" });
      await expect(source.readInto!(2047, 2, target)).rejects.toMatchObject({ code: "range" });
    } finally {
      await source.close();
    }
  });

  it("a missing file is a clear error", async () => {
    const error = await FileSource.open(join(dir, "nope.img")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({ code: "config", message: /nope\.img: no such file/ });
  });

  it("a directory is refused", async () => {
    await expect(FileSource.open(dir)).rejects.toMatchObject({ code: "config" });
  });

  it("a size that is not a multiple of 512 is refused", async () => {
    const odd = join(dir, "odd.img");
    await writeFile(odd, randomBytes(512 * 3 + 100));
    await expect(FileSource.open(odd)).rejects.toMatchObject({
      code: "config",
      message: /1636 bytes is not a multiple of 512 \(100 bytes past the last whole sector\)/,
    });
  });

  it("a file truncated after open gives short-read", async () => {
    const shrinking = join(dir, "shrink.img");
    await writeFile(shrinking, image);
    const source = await FileSource.open(shrinking);
    try {
      await truncate(shrinking, 512 * 1000);
      await expect(source.read(999, 2)).rejects.toMatchObject({
        code: "short-read",
        message: /was it truncated/,
      });
      expect((await source.read(998, 2)).length).toBe(1024);
    } finally {
      await source.close();
    }
  });

  it("close waits for reads in flight, is idempotent, and later reads fail with closed", async () => {
    const source = await FileSource.open(path);
    const pending = source.read(0, 2048);
    await Promise.all([source.close(), source.close()]);
    expect(Buffer.from(await pending).equals(image)).toBe(true);
    await expect(source.read(0, 1)).rejects.toMatchObject({ code: "closed" });
  });
});
