import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkLbaPattern, checkPattern, fillLbaPattern, PatternSource } from "../../runtime/block/pattern.ts";
import { BlockError, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { expectBlockError, expectBytes, readIntoContract } from "./contract.ts";

/** The format's definition, written the slow obvious way. */
function reference(firstLba: number, sectors: number): Uint8Array {
  const out = new Uint8Array(sectors * SECTOR_SIZE);
  const view = new DataView(out.buffer);
  for (let s = 0; s < sectors; s++) {
    for (let w = 0; w < SECTOR_SIZE / 8; w++)
      view.setBigUint64(s * SECTOR_SIZE + w * 8, BigInt(firstLba + s), true);
  }
  return out;
}

describe("lba pattern", () => {
  it("writes each sector number as 64 little-endian u64 words", () => {
    const buf = new Uint8Array(2 * SECTOR_SIZE);
    fillLbaPattern(buf, 0x0102_0304_05);
    expect([...buf.subarray(0, 16)]).toEqual([5, 4, 3, 2, 1, 0, 0, 0, 5, 4, 3, 2, 1, 0, 0, 0]);
    expect([...buf.subarray(SECTOR_SIZE - 8, SECTOR_SIZE + 8)]).toEqual([
      5, 4, 3, 2, 1, 0, 0, 0, 6, 4, 3, 2, 1, 0, 0, 0,
    ]);
  });

  it("matches the definition for any start sector, aligned or not", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.nat(1000), fc.integer({ min: 2 ** 32 - 5, max: 2 ** 32 + 5 }), fc.constant(2 ** 53 - 10)),
        fc.integer({ min: 0, max: 9 }),
        fc.integer({ min: 0, max: 7 }),
        (firstLba, sectors, misalign) => {
          const backing = new Uint8Array(sectors * SECTOR_SIZE + 8);
          const buf = backing.subarray(misalign, misalign + sectors * SECTOR_SIZE);
          fillLbaPattern(buf, firstLba);
          expectBytes(buf, reference(firstLba, sectors));
          expect(backing.subarray(misalign + sectors * SECTOR_SIZE).every((b) => b === 0)).toBe(true);
          expect(checkLbaPattern(buf, firstLba)).toBe(-1);
        },
      ),
    );
  });

  it("fills across the internal staging blocks when unaligned", () => {
    const backing = new Uint8Array(1500 * SECTOR_SIZE + 1);
    const buf = backing.subarray(1);
    fillLbaPattern(buf, 77);
    expectBytes(buf, reference(77, 1500));
  });

  it("finds a misplaced sector", () => {
    const buf = reference(1000, 16);
    // Sector 1006's data landed one sector too late, over 1007.
    buf.copyWithin(7 * SECTOR_SIZE, 6 * SECTOR_SIZE, 7 * SECTOR_SIZE);
    expect(checkLbaPattern(buf, 1000)).toBe(7);
    expect(checkLbaPattern(buf.subarray(8 * SECTOR_SIZE), 1008)).toBe(-1);
    // The same data checked against the wrong start is wrong from the first sector.
    expect(checkLbaPattern(reference(1000, 4), 1001)).toBe(0);
  });

  it("finds a single changed byte, also far into a large buffer", () => {
    const buf = reference(0, 3000);
    buf[2900 * SECTOR_SIZE + 511] ^= 1;
    expect(checkLbaPattern(buf, 0)).toBe(2900);
    buf[2900 * SECTOR_SIZE + 511] ^= 1;
    buf[513 * SECTOR_SIZE] ^= 0x80;
    expect(checkLbaPattern(buf, 0)).toBe(513);
  });

  it("is not fooled by a negative zero in sector 0", () => {
    const buf = new Uint8Array(SECTOR_SIZE);
    buf[7] = 0x80; // the bits of -0.0 as a double
    expect(checkLbaPattern(buf, 0)).toBe(0);
  });

  it("checks the zero pattern", () => {
    const buf = new Uint8Array(700 * SECTOR_SIZE);
    expect(checkPattern("zero", buf, 5)).toBe(-1);
    buf[600 * SECTOR_SIZE + 3] = 1;
    expect(checkPattern("zero", buf, 5)).toBe(600);
    expect(checkPattern("lba", reference(5, 2), 5)).toBe(-1);
  });

  it("rejects partial sectors and invalid start sectors", () => {
    expect(() => fillLbaPattern(new Uint8Array(100), 0)).toThrow(BlockError);
    expect(() => checkLbaPattern(new Uint8Array(SECTOR_SIZE), -1)).toThrow(BlockError);
    expect(() => fillLbaPattern(new Uint8Array(2 * SECTOR_SIZE), 2 ** 53 - 1)).toThrow(BlockError);
  });

  it("generates and checks 1 GiB fast enough for 32 GiB in about ten seconds", async () => {
    const sectors = 2 ** 21;
    const chunk = 2048; // 1 MiB reads
    const source = new PatternSource(sectors);
    const start = performance.now();
    for (let lba = 0; lba < sectors; lba += chunk) {
      const data = await source.read(lba, chunk);
      if (checkLbaPattern(data, lba) !== -1) throw new Error(`pattern broken at ${lba}`);
    }
    const seconds = (performance.now() - start) / 1000;
    // Generation plus checking; a generous bound so slow CI machines pass.
    expect(seconds).toBeLessThan(2);
  });
});

describe("PatternSource", () => {
  it("serves the lba pattern at any offset", async () => {
    const source = new PatternSource(1 << 30);
    expect(source.description).toMatch(/pattern lba/);
    expectBytes(await source.read(123456789, 3), reference(123456789, 3));
    expectBytes(await source.read((1 << 30) - 1, 1), reference((1 << 30) - 1, 1));
  });

  it("serves zeros", async () => {
    const source = new PatternSource(100, "zero");
    expectBytes(await source.read(10, 5), new Uint8Array(5 * SECTOR_SIZE));
  });

  it("returns independent buffers", async () => {
    const source = new PatternSource(100);
    const a = await source.read(0, 1);
    const b = await source.read(0, 1);
    a.fill(0);
    expect(checkLbaPattern(b, 0)).toBe(-1);
    expect(a.buffer).not.toBe(b.buffer);
  });

  describe("readInto (lba)", () => {
    readIntoContract(
      async () => new PatternSource(100),
      (lba, count) => reference(lba, count),
    );
  });

  describe("readInto (zero)", () => {
    readIntoContract(
      async () => new PatternSource(100, "zero"),
      (_lba, count) => new Uint8Array(count * SECTOR_SIZE),
    );
  });

  it("readInto fills targets at unaligned offsets, and refuses use after close", async () => {
    const source = new PatternSource(1 << 30);
    const target = new Uint8Array(3 * SECTOR_SIZE + 5);
    await source.readInto(123456789, 3, target, 5); // not 8-byte aligned: the staged fill
    expectBytes(target.subarray(5), reference(123456789, 3));
    await source.close();
    await expectBlockError(source.readInto(0, 1, target), "closed");
  });

  it("rejects out-of-range reads and use after close", async () => {
    const source = new PatternSource(100);
    await expectBlockError(source.read(99, 2), "range");
    await source.close();
    await expectBlockError(source.read(0, 1), "closed");
  });
});
