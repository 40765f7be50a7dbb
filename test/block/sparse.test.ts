import { describe, expect, it } from "vitest";
import { SparseBackend } from "../../runtime/block/sparse.ts";
import { BlockError, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { backendContract, expectBytes, readIntoContract, sectorsOf } from "./contract.ts";

describe("SparseBackend", () => {
  describe("with the default chunk size", () => {
    backendContract(async (sectors) => new SparseBackend(sectors));
  });
  describe("with small chunks that do not divide the disk", () => {
    backendContract(async (sectors) => new SparseBackend(sectors, 3));
  });

  describe("readInto, over written, zero-written and never-written chunks", () => {
    /** Sectors 2..5 and 12..13 hold data, 7..8 were written with zeros, the rest never. */
    const model = new Uint8Array(20 * SECTOR_SIZE);
    model.set(sectorsOf(2, 4), 2 * SECTOR_SIZE);
    model.set(sectorsOf(12, 2, 9), 12 * SECTOR_SIZE);
    readIntoContract(
      async () => {
        const disk = new SparseBackend(20, 3);
        await disk.write(2, sectorsOf(2, 4));
        await disk.write(7, new Uint8Array(2 * SECTOR_SIZE));
        await disk.write(12, sectorsOf(12, 2, 9));
        return disk;
      },
      (lba, count) => model.slice(lba * SECTOR_SIZE, (lba + count) * SECTOR_SIZE),
    );
  });

  it("readInto zeroes what was never written, even in a dirty target", async () => {
    const disk = new SparseBackend(64, 8);
    await disk.write(9, sectorsOf(9, 1));
    const target = new Uint8Array(4 * SECTOR_SIZE).fill(0xff);
    await disk.readInto(8, 4, target);
    const want = new Uint8Array(4 * SECTOR_SIZE);
    want.set(sectorsOf(9, 1), SECTOR_SIZE);
    expectBytes(target, want);
    expect(disk.chunkCount).toBe(1); // reads never allocate chunks
  });

  it("costs only the chunks that were written, even for a 32 GiB disk", async () => {
    const sectors = (32 * 2 ** 30) / SECTOR_SIZE;
    const disk = new SparseBackend(sectors);
    expect(disk.sectors).toBe(sectors);
    await disk.write(0, sectorsOf(0, 1));
    await disk.write(sectors - 2, sectorsOf(sectors - 2, 2));
    await disk.write(1000, sectorsOf(1000, 300)); // spans chunks 7..10
    expect(disk.chunkCount).toBe(1 + 1 + 4);
    expect(disk.storedBytes).toBe(6 * 128 * SECTOR_SIZE);
    expect(disk.writtenSectors).toBe(1 + 2 + 300);
    expect(await disk.read(sectors - 3, 3)).toEqual(
      new Uint8Array([...new Uint8Array(SECTOR_SIZE), ...sectorsOf(sectors - 2, 2)]),
    );
    expect(await disk.read(5000, 8)).toEqual(new Uint8Array(8 * SECTOR_SIZE));
    expect(disk.chunkCount).toBe(6); // reads never allocate
  });

  it("does not store zero writes but still counts them as written", async () => {
    const disk = new SparseBackend(1024, 16);
    await disk.write(100, new Uint8Array(20 * SECTOR_SIZE));
    expect(disk.chunkCount).toBe(0);
    expect(disk.writtenSectors).toBe(20);
    expect(disk.isWritten(100)).toBe(true);
    expect(disk.isWritten(119)).toBe(true);
    expect(disk.isWritten(120)).toBe(false);
    expect(disk.isWritten(99)).toBe(false);
    // Zeros over real data must overwrite it.
    await disk.write(200, sectorsOf(200, 1));
    await disk.write(200, new Uint8Array(SECTOR_SIZE));
    expect(await disk.read(200, 1)).toEqual(new Uint8Array(SECTOR_SIZE));
    expect(disk.writtenSectors).toBe(21);
  });

  it("counts rewritten sectors once", async () => {
    const disk = new SparseBackend(256, 8);
    await disk.write(0, sectorsOf(0, 10));
    await disk.write(5, sectorsOf(5, 10, 3));
    await disk.write(0, sectorsOf(0, 16, 4));
    expect(disk.writtenSectors).toBe(16);
    expect(disk.chunkCount).toBe(2);
  });

  it("rejects an invalid chunk size", () => {
    expect(() => new SparseBackend(10, 0)).toThrow(BlockError);
    expect(() => new SparseBackend(10, 2.5)).toThrow(/chunk size/);
  });
});
