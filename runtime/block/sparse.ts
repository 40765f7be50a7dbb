import { checkSectorCount, checkSectorData, closedError } from "./guards.ts";
import { type BlockBackend, BlockError, checkRange, checkTarget, SECTOR_SIZE } from "./types.ts";

/** One chunk of the disk that has been written at least once. */
interface Chunk {
  /** Contents; absent while everything written to the chunk was zeros. */
  data: Uint8Array | undefined;
  /** One bit per sector of the chunk: has it been written? */
  readonly written: Uint8Array;
  writtenCount: number;
}

/**
 * An in-memory disk that only stores chunks that were written with non-zero data; everything
 * else reads as zeros. A simulated 32 GiB local disk thus costs only what a scenario wrote.
 */
export class SparseBackend implements BlockBackend {
  readonly sectors: number;
  readonly chunkSectors: number;
  readonly description: string;
  readonly #chunks = new Map<number, Chunk>();
  #writtenSectors = 0;
  #chunkCount = 0;
  #storedBytes = 0;
  #closed = false;

  constructor(sectors: number, chunkSectors = 128, description = "sparse disk") {
    this.description = description;
    checkSectorCount(description, sectors);
    if (!Number.isSafeInteger(chunkSectors) || chunkSectors <= 0) {
      throw new BlockError(`${description}: invalid chunk size of ${chunkSectors} sectors`, "config");
    }
    this.sectors = sectors;
    this.chunkSectors = chunkSectors;
  }

  /** Distinct sectors written at least once (with any data, zeros included). */
  get writtenSectors(): number {
    return this.#writtenSectors;
  }

  /** Chunks holding data: the memory cost, in chunks. */
  get chunkCount(): number {
    return this.#chunkCount;
  }

  /** Bytes of sector data held in memory. */
  get storedBytes(): number {
    return this.#storedBytes;
  }

  isWritten(lba: number): boolean {
    checkRange(this.description, this.sectors, lba, 1);
    const chunk = this.#chunks.get(Math.floor(lba / this.chunkSectors));
    if (chunk === undefined) return false;
    const bit = lba % this.chunkSectors;
    return (chunk.written[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    const out = new Uint8Array(count * SECTOR_SIZE);
    this.#copyStored(lba, count, out, 0);
    return out;
  }

  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    const bytes = checkTarget(this.description, count, target, offset);
    target.fill(0, offset, offset + bytes); // what was never written reads as zeros
    this.#copyStored(lba, count, target, offset);
  }

  /** Copies the stored chunks' data for [lba, lba + count) to target[offset..]; leaves the rest. */
  #copyStored(lba: number, count: number, target: Uint8Array, offset: number): void {
    this.#forEachPiece(lba, count, (chunk, first, n, at) => {
      const data = this.#chunks.get(chunk)?.data;
      if (data !== undefined)
        target.set(data.subarray(first * SECTOR_SIZE, (first + n) * SECTOR_SIZE), offset + at);
    });
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    this.#checkOpen();
    const count = checkSectorData(this.description, data);
    checkRange(this.description, this.sectors, lba, count);
    this.#forEachPiece(lba, count, (index, first, n, at) => {
      const piece = data.subarray(at, at + n * SECTOR_SIZE);
      const chunk = this.#chunk(index);
      if (chunk.data === undefined && !isZero(piece)) {
        chunk.data = new Uint8Array(this.#chunkLength(index) * SECTOR_SIZE);
        this.#chunkCount++;
        this.#storedBytes += chunk.data.length;
      }
      chunk.data?.set(piece, first * SECTOR_SIZE);
      this.#markWritten(chunk, index, first, n);
    });
  }

  async flush(): Promise<void> {
    this.#checkOpen();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** Splits [lba, lba+count) at chunk boundaries: (chunk index, first sector in chunk, sectors, byte offset). */
  #forEachPiece(
    lba: number,
    count: number,
    visit: (chunk: number, first: number, n: number, at: number) => void,
  ) {
    let sector = lba;
    const end = lba + count;
    while (sector < end) {
      const index = Math.floor(sector / this.chunkSectors);
      const first = sector - index * this.chunkSectors;
      const n = Math.min(this.chunkSectors - first, end - sector);
      visit(index, first, n, (sector - lba) * SECTOR_SIZE);
      sector += n;
    }
  }

  #chunk(index: number): Chunk {
    let chunk = this.#chunks.get(index);
    if (chunk === undefined) {
      chunk = { data: undefined, written: new Uint8Array(Math.ceil(this.chunkSectors / 8)), writtenCount: 0 };
      this.#chunks.set(index, chunk);
    }
    return chunk;
  }

  /** The last chunk is cut short when the disk size is not a multiple of the chunk size. */
  #chunkLength(index: number): number {
    return Math.min(this.chunkSectors, this.sectors - index * this.chunkSectors);
  }

  #markWritten(chunk: Chunk, index: number, first: number, n: number): void {
    if (chunk.writtenCount === this.#chunkLength(index)) return; // the common case once a chunk is full
    for (let bit = first; bit < first + n; bit++) {
      const mask = 1 << (bit & 7);
      if ((chunk.written[bit >> 3]! & mask) === 0) {
        chunk.written[bit >> 3]! |= mask;
        chunk.writtenCount++;
        this.#writtenSectors++;
      }
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw closedError(this.description);
  }
}

/** Word-at-a-time zero test; writes of zeros must not allocate chunks. */
function isZero(bytes: Uint8Array): boolean {
  if (bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
