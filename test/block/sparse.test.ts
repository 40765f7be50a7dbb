import { describe, expect, it } from "vitest";
import { SparseBackend } from "../../runtime/block/sparse.ts";
import { BlockError, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { backendContract, sectorsOf } from "./contract.ts";

describe("SparseBackend", () => {
  describe("with the default chunk size", () => {
    backendContract(async (sectors) => new SparseBackend(sectors));
  });
  describe("with small chunks that do not divide the disk", () => {
    backendContract(async (sectors) => new SparseBackend(sectors, 3));
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
