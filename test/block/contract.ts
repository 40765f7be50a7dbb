import { Buffer } from "node:buffer";
import fc from "fast-check";
import { expect, it } from "vitest";
import { type BlockBackend, BlockError, type BlockSource, SECTOR_SIZE } from "../../runtime/block/types.ts";

/** Sector `lba` filled with a byte derived from lba and a tag, so misplaced data shows. */
export function sectorsOf(lba: number, count: number, tag = 1): Uint8Array {
  const data = new Uint8Array(count * SECTOR_SIZE);
  for (let i = 0; i < count; i++) data.fill((lba + i) * 7 + tag, i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
  return data;
}

export async function expectBlockError(
  promise: Promise<unknown>,
  code: BlockError["code"],
): Promise<BlockError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(BlockError);
  expect((error as BlockError).code).toBe(code);
  return error as BlockError;
}

/** Fast byte comparison (vitest's deep equality walks arrays element by element); diff on failure. */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  if (Buffer.compare(actual, expected) !== 0) expect(actual).toEqual(expected);
}

/** The behaviour every writable backend shares; `make` returns a fresh, zeroed device of `sectors`. */
export function backendContract(make: (sectors: number) => Promise<BlockBackend>): void {
  it("reads back what was written, and zeros elsewhere", async () => {
    const disk = await make(64);
    expect(disk.sectors).toBe(64);
    await disk.write(10, sectorsOf(10, 5));
    expect(await disk.read(10, 5)).toEqual(sectorsOf(10, 5));
    expect(await disk.read(0, 10)).toEqual(new Uint8Array(10 * SECTOR_SIZE));
    const around = await disk.read(9, 7);
    expect(around.subarray(0, SECTOR_SIZE)).toEqual(new Uint8Array(SECTOR_SIZE));
    expect(around.subarray(SECTOR_SIZE, 6 * SECTOR_SIZE)).toEqual(sectorsOf(10, 5));
    expect(around.subarray(6 * SECTOR_SIZE)).toEqual(new Uint8Array(SECTOR_SIZE));
    await disk.flush();
    await disk.close();
  });

  it("returns fresh buffers that do not alias the device", async () => {
    const disk = await make(4);
    await disk.write(1, sectorsOf(1, 1));
    const first = await disk.read(1, 1);
    first.fill(0xee);
    expect(await disk.read(1, 1)).toEqual(sectorsOf(1, 1));
    const source = sectorsOf(2, 1);
    await disk.write(2, source);
    source.fill(0xdd);
    expect(await disk.read(2, 1)).toEqual(sectorsOf(2, 1));
    await disk.close();
  });

  it("accepts the last sector and zero-length reads", async () => {
    const disk = await make(8);
    await disk.write(7, sectorsOf(7, 1));
    expect(await disk.read(7, 1)).toEqual(sectorsOf(7, 1));
    expect((await disk.read(8, 0)).length).toBe(0);
    await disk.close();
  });

  it("rejects out-of-range and malformed requests with a range error", async () => {
    const disk = await make(8);
    await expectBlockError(disk.read(7, 2), "range");
    await expectBlockError(disk.read(-1, 1), "range");
    await expectBlockError(disk.read(0.5, 1), "range");
    await expectBlockError(disk.read(9, 0), "range");
    await expectBlockError(disk.write(8, sectorsOf(8, 1)), "range");
    await expectBlockError(disk.write(0, new Uint8Array(100)), "range");
    // A rejected write changed nothing.
    expect(await disk.read(0, 8)).toEqual(new Uint8Array(8 * SECTOR_SIZE));
    await disk.close();
  });

  it("rejects use after close with a closed error, and close is idempotent", async () => {
    const disk = await make(8);
    await disk.close();
    await disk.close();
    await expectBlockError(disk.read(0, 1), "closed");
    await expectBlockError(disk.write(0, sectorsOf(0, 1)), "closed");
    await expectBlockError(disk.flush(), "closed");
  });

  it("behaves like a plain byte array under random writes and reads", async () => {
    const sectors = 40;
    const op = fc.record({
      write: fc.boolean(),
      lba: fc.nat(sectors - 1),
      count: fc.integer({ min: 1, max: 12 }),
      seed: fc.integer({ min: 0, max: 255 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 25 }), async (ops) => {
        const disk = await make(sectors);
        const model = new Uint8Array(sectors * SECTOR_SIZE);
        try {
          for (const { write, lba, count: wanted, seed } of ops) {
            const count = Math.min(wanted, sectors - lba);
            if (write) {
              // Zero payloads exercise the "written but all zeros" paths.
              const data = seed % 5 === 0 ? new Uint8Array(count * SECTOR_SIZE) : sectorsOf(lba, count, seed);
              await disk.write(lba, data);
              model.set(data, lba * SECTOR_SIZE);
            } else {
              const got = await disk.read(lba, count);
              expectBytes(got, model.subarray(lba * SECTOR_SIZE, (lba + count) * SECTOR_SIZE));
            }
          }
          expectBytes(await disk.read(0, sectors), model);
        } finally {
          await disk.close();
        }
      }),
      { numRuns: 60 },
    );
  });
}

/**
 * BlockSource.readInto, for sources that have it: the bytes read() gives, at an offset of the
 * caller's buffer, nothing outside that range touched, and read()'s errors. `make` returns a
 * source of at least 16 sectors; `expected(lba, count)` is what read(lba, count) must give.
 */
export function readIntoContract(
  make: () => Promise<BlockSource>,
  expected: (lba: number, count: number) => Uint8Array,
): void {
  it("readInto puts read()'s bytes at the offset and touches nothing else", async () => {
    const source = await make();
    if (source.readInto === undefined) throw new Error(`${source.description} has no readInto`);
    for (const [lba, count, offset] of [
      [0, 1, 0],
      [3, 5, 7],
      [10, 6, 512],
      [16, 0, 3],
    ] as const) {
      const target = new Uint8Array(offset + count * SECTOR_SIZE + 9).fill(0xa5);
      await source.readInto(lba, count, target, offset);
      expectBytes(target.subarray(offset, offset + count * SECTOR_SIZE), expected(lba, count));
      expectBytes(await source.read(lba, count), expected(lba, count));
      expect(target.subarray(0, offset).every((b) => b === 0xa5)).toBe(true);
      expect(target.subarray(offset + count * SECTOR_SIZE).every((b) => b === 0xa5)).toBe(true);
    }
    // The offset defaults to 0; a subarray target is written through its own view.
    const whole = new Uint8Array(4 * SECTOR_SIZE);
    await source.readInto(2, 2, whole.subarray(SECTOR_SIZE, 3 * SECTOR_SIZE));
    expectBytes(whole.subarray(SECTOR_SIZE, 3 * SECTOR_SIZE), expected(2, 2));
    await source.close();
  });

  it("readInto rejects bad ranges, small targets and bad offsets with a range error", async () => {
    const source = await make();
    const readInto = source.readInto!.bind(source);
    const end = source.sectors;
    await expectBlockError(readInto(end - 1, 2, new Uint8Array(2 * SECTOR_SIZE)), "range");
    await expectBlockError(readInto(-1, 1, new Uint8Array(SECTOR_SIZE)), "range");
    await expectBlockError(readInto(0, 2, new Uint8Array(2 * SECTOR_SIZE - 1)), "range");
    await expectBlockError(readInto(0, 1, new Uint8Array(SECTOR_SIZE), 1), "range");
    await expectBlockError(readInto(0, 1, new Uint8Array(2 * SECTOR_SIZE), -1), "range");
    await expectBlockError(readInto(0, 1, new Uint8Array(2 * SECTOR_SIZE), 0.5), "range");
    await source.close();
  });
}
