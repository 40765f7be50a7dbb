import { describe, expect, it } from "vitest";
import { MemoryBackend } from "../../runtime/block/memory.ts";
import { OverlayBackend } from "../../runtime/block/overlay.ts";
import { checkLbaPattern, PatternSource } from "../../runtime/block/pattern.ts";
import { type BlockSource, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { expectBytes, readIntoContract, sectorsOf } from "./contract.ts";

/** The lba pattern with sectors 3..4 and 9 written over it. */
async function overlay(base: BlockSource = new PatternSource(32)): Promise<OverlayBackend> {
  const disk = new OverlayBackend(base);
  await disk.write(3, sectorsOf(3, 2, 5));
  await disk.write(9, sectorsOf(9, 1, 6));
  return disk;
}

async function expected(lba: number, count: number): Promise<Uint8Array> {
  const out = await new PatternSource(32).read(lba, count);
  for (let s = lba; s < lba + count; s++) {
    const over = s === 3 || s === 4 ? sectorsOf(s, 1, 5) : s === 9 ? sectorsOf(s, 1, 6) : null;
    if (over) out.set(over, (s - lba) * SECTOR_SIZE);
  }
  return out;
}

const reference = new Map<string, Uint8Array>();
for (let lba = 0; lba <= 16; lba++)
  for (let count = 0; lba + count <= 32 && count <= 8; count++)
    reference.set(`${lba}+${count}`, await expected(lba, count));

/** A source without readInto, so the overlay falls back to read(). */
function plain(source: BlockSource): BlockSource {
  return {
    sectors: source.sectors,
    description: "plain",
    read: (lba, count) => source.read(lba, count),
    close: () => source.close(),
  };
}

describe("OverlayBackend", () => {
  describe("readInto through the image's readInto", () => {
    readIntoContract(overlay, (lba, count) => reference.get(`${lba}+${count}`)!);
  });

  describe("readInto through the image's read", () => {
    readIntoContract(
      () => overlay(plain(new PatternSource(32))),
      (lba, count) => reference.get(`${lba}+${count}`)!,
    );
  });

  it("reads the image itself while nothing was written", async () => {
    const fresh = new OverlayBackend(new PatternSource(8));
    expect(fresh.writtenSectors).toBe(0);
    const target = new Uint8Array(8 * SECTOR_SIZE);
    await fresh.readInto(0, 8, target);
    expect(checkLbaPattern(target, 0)).toBe(-1);
    expectBytes(await fresh.read(0, 8), target);
  });

  it("readInto sees writes over a writable image too", async () => {
    const image = new MemoryBackend(16);
    const disk = new OverlayBackend(image);
    await disk.write(2, sectorsOf(2, 1));
    const target = new Uint8Array(3 * SECTOR_SIZE);
    await disk.readInto(1, 3, target);
    expectBytes(target.subarray(SECTOR_SIZE, 2 * SECTOR_SIZE), sectorsOf(2, 1));
    expect(image.bytes.every((b) => b === 0)).toBe(true); // the image is never written
  });
});
