import { Buffer } from "node:buffer";
import { checkSectorCount, closedError } from "./guards.ts";
import { BlockError, type BlockSource, checkRange, checkTarget, SECTOR_SIZE } from "./types.ts";

/**
 * Generated images of the guest-trace format. `lba`: every 8-byte word of sector s is s as a
 * little-endian u64 (64 copies per sector), so any sector read back proves where it came
 * from. `zero`: all zeros.
 */
export type PatternName = "lba" | "zero";

const WORDS_PER_SECTOR = SECTOR_SIZE / 8;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** Aligned staging area for unaligned fills and for the reference in checks (256 KiB). */
const SCRATCH_SECTORS = 512;
const scratch = new Uint8Array(SCRATCH_SECTORS * SECTOR_SIZE);
const zeros = new Uint8Array(SCRATCH_SECTORS * SECTOR_SIZE);

const wordF64 = new Float64Array(1);
const wordU32 = new Uint32Array(wordF64.buffer);

/**
 * The double whose bits are `lba` as a u64, so one native Float64Array.fill writes a whole
 * sector (a BigInt per sector would allocate). Safe integers stay far below the NaN exponent,
 * so the bits survive the store unchanged.
 */
function lbaWord(lba: number): number {
  wordU32[0] = lba >>> 0;
  wordU32[1] = Math.floor(lba / 0x1_0000_0000);
  return wordF64[0]!;
}

function checkArgs(what: string, buf: Uint8Array, firstLba: number): number {
  if (buf.length % SECTOR_SIZE !== 0) {
    throw new BlockError(`${what}: buffer of ${buf.length} bytes is not whole sectors`, "range");
  }
  const sectors = buf.length / SECTOR_SIZE;
  if (!Number.isSafeInteger(firstLba) || firstLba < 0 || !Number.isSafeInteger(firstLba + sectors)) {
    throw new BlockError(`${what}: invalid first sector ${firstLba}`, "range");
  }
  return sectors;
}

function fillAligned(buf: Uint8Array, sectors: number, firstLba: number): void {
  const words = new Float64Array(buf.buffer, buf.byteOffset, sectors * WORDS_PER_SECTOR);
  for (let i = 0, w = 0; i < sectors; i++, w += WORDS_PER_SECTOR) {
    words.fill(lbaWord(firstLba + i), w, w + WORDS_PER_SECTOR);
  }
}

/** Byte-order independent, for big-endian hosts. */
function fillPortable(buf: Uint8Array, sectors: number, firstLba: number): void {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
  for (let i = 0; i < sectors; i++) {
    const lba = firstLba + i;
    const lo = lba >>> 0;
    const hi = Math.floor(lba / 0x1_0000_0000);
    for (let off = i * SECTOR_SIZE, end = off + SECTOR_SIZE; off < end; off += 8) {
      view.setUint32(off, lo, true);
      view.setUint32(off + 4, hi, true);
    }
  }
}

function fillSectors(buf: Uint8Array, sectors: number, firstLba: number): void {
  if (!LITTLE_ENDIAN) {
    fillPortable(buf, sectors, firstLba);
  } else if (buf.byteOffset % 8 === 0) {
    fillAligned(buf, sectors, firstLba);
  } else {
    for (let done = 0; done < sectors; done += SCRATCH_SECTORS) {
      const n = Math.min(SCRATCH_SECTORS, sectors - done);
      fillAligned(scratch, n, firstLba + done);
      buf.set(scratch.subarray(0, n * SECTOR_SIZE), done * SECTOR_SIZE);
    }
  }
}

/** Writes the `lba` pattern for sectors firstLba.. into `buf` (whole sectors). */
export function fillLbaPattern(buf: Uint8Array, firstLba: number): void {
  fillSectors(buf, checkArgs("fillLbaPattern", buf, firstLba), firstLba);
}

/** Index within `buf` (not the LBA) of the first sector that differs from `expected`, or -1. */
function firstMismatch(buf: Uint8Array, sectors: number, expected: (n: number, done: number) => Uint8Array) {
  for (let done = 0; done < sectors; done += SCRATCH_SECTORS) {
    const n = Math.min(SCRATCH_SECTORS, sectors - done);
    const want = expected(n, done);
    const have = buf.subarray(done * SECTOR_SIZE, (done + n) * SECTOR_SIZE);
    // A native memcmp per 256 KiB; only a failing block is searched byte by byte.
    if (Buffer.compare(have, want) !== 0) {
      let i = 0;
      while (have[i] === want[i]) i++;
      return done + Math.floor(i / SECTOR_SIZE);
    }
  }
  return -1;
}

/**
 * Checks `buf` against the `lba` pattern for sectors firstLba..; returns the index within
 * `buf` of the first wrong sector (its LBA is firstLba + index), or -1 when all match.
 */
export function checkLbaPattern(buf: Uint8Array, firstLba: number): number {
  const sectors = checkArgs("checkLbaPattern", buf, firstLba);
  return firstMismatch(buf, sectors, (n, done) => {
    const want = scratch.subarray(0, n * SECTOR_SIZE);
    fillSectors(want, n, firstLba + done);
    return want;
  });
}

/** Fills `buf` with `pattern` as it appears at firstLba. */
export function fillPattern(pattern: PatternName, buf: Uint8Array, firstLba: number): void {
  const sectors = checkArgs("fillPattern", buf, firstLba);
  if (pattern === "lba") fillSectors(buf, sectors, firstLba);
  else buf.fill(0);
}

/** Like checkLbaPattern, for either pattern. */
export function checkPattern(pattern: PatternName, buf: Uint8Array, firstLba: number): number {
  if (pattern === "lba") return checkLbaPattern(buf, firstLba);
  const sectors = checkArgs("checkPattern", buf, firstLba);
  return firstMismatch(buf, sectors, (n) => zeros.subarray(0, n * SECTOR_SIZE));
}

/** A read-only image whose contents are computed: no storage at any size. */
export class PatternSource implements BlockSource {
  readonly description: string;
  #closed = false;

  constructor(
    readonly sectors: number,
    readonly pattern: PatternName = "lba",
    description?: string,
  ) {
    this.description = description ?? `pattern ${pattern} (${sectors} sectors)`;
    checkSectorCount(this.description, sectors);
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    if (this.#closed) throw closedError(this.description);
    checkRange(this.description, this.sectors, lba, count);
    const bytes = count * SECTOR_SIZE;
    if (this.pattern === "zero") return new Uint8Array(bytes);
    // Every byte is overwritten, so skip zero-initialisation; the buffer is unpooled and ours.
    const raw = Buffer.allocUnsafeSlow(bytes);
    const buf = new Uint8Array(raw.buffer, raw.byteOffset, bytes);
    fillSectors(buf, count, lba);
    return buf;
  }

  /** Computes the sectors straight into the caller's buffer. */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    if (this.#closed) throw closedError(this.description);
    checkRange(this.description, this.sectors, lba, count);
    const bytes = checkTarget(this.description, count, target, offset);
    const out = target.subarray(offset, offset + bytes);
    if (this.pattern === "zero") out.fill(0);
    else fillSectors(out, count, lba);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
