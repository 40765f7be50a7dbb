import { describe, expect, it } from "vitest";
import { MemoryBackend } from "../../runtime/block/memory.ts";
import { BlockError, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { backendContract, expectBlockError, readIntoContract, sectorsOf } from "./contract.ts";

describe("MemoryBackend", () => {
  backendContract(async (sectors) => new MemoryBackend(sectors));

  const image = sectorsOf(0, 20);
  readIntoContract(
    async () => new MemoryBackend(image.slice()),
    (lba, count) => image.slice(lba * SECTOR_SIZE, (lba + count) * SECTOR_SIZE),
  );

  it("readInto copies once and refuses use after close", async () => {
    const disk = new MemoryBackend(sectorsOf(0, 4));
    const target = new Uint8Array(SECTOR_SIZE);
    await disk.readInto(3, 1, target);
    disk.bytes.fill(0); // a copy, not a view
    expect(target).toEqual(sectorsOf(3, 1));
    await disk.close();
    await expectBlockError(disk.readInto(0, 1, target), "closed");
  });

  it("uses a given array as the disk itself", async () => {
    const bytes = new Uint8Array(4 * SECTOR_SIZE);
    const disk = new MemoryBackend(bytes, "test disk");
    expect(disk.sectors).toBe(4);
    expect(disk.description).toBe("test disk");
    await disk.write(2, sectorsOf(2, 1));
    expect(bytes.subarray(2 * SECTOR_SIZE, 3 * SECTOR_SIZE)).toEqual(sectorsOf(2, 1));
    bytes.fill(9, 0, SECTOR_SIZE);
    expect(await disk.read(0, 1)).toEqual(new Uint8Array(SECTOR_SIZE).fill(9));
  });

  it("refuses arrays and sizes that are not whole sectors", () => {
    expect(() => new MemoryBackend(new Uint8Array(513))).toThrow(BlockError);
    expect(() => new MemoryBackend(-1)).toThrow(/invalid size/);
    expect(() => new MemoryBackend(1.5)).toThrow(BlockError);
  });
});
