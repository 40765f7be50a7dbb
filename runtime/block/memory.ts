import { checkSectorCount, checkSectorData, closedError } from "./guards.ts";
import { type BlockBackend, BlockError, checkRange, checkTarget, SECTOR_SIZE } from "./types.ts";

/**
 * A disk held entirely in a Uint8Array: the fastest backend, for tests and small local disks.
 * When constructed from an array the array itself is the disk (not copied), so tests can look
 * at or corrupt it directly.
 */
export class MemoryBackend implements BlockBackend {
  readonly sectors: number;
  readonly description: string;
  readonly bytes: Uint8Array;
  #closed = false;

  constructor(init: number | Uint8Array, description = "memory disk") {
    this.description = description;
    if (typeof init === "number") {
      checkSectorCount(description, init);
      this.bytes = new Uint8Array(init * SECTOR_SIZE);
    } else {
      if (init.length % SECTOR_SIZE !== 0) {
        throw new BlockError(
          `${description}: ${init.length} bytes is not a whole number of ${SECTOR_SIZE}-byte sectors`,
          "config",
        );
      }
      this.bytes = init;
    }
    this.sectors = this.bytes.length / SECTOR_SIZE;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    return this.bytes.slice(lba * SECTOR_SIZE, (lba + count) * SECTOR_SIZE);
  }

  /** One copy straight from the disk array into the caller's buffer (read() must allocate). */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    checkTarget(this.description, count, target, offset);
    target.set(this.bytes.subarray(lba * SECTOR_SIZE, (lba + count) * SECTOR_SIZE), offset);
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    this.#checkOpen();
    const count = checkSectorData(this.description, data);
    checkRange(this.description, this.sectors, lba, count);
    this.bytes.set(data, lba * SECTOR_SIZE);
  }

  async flush(): Promise<void> {
    this.#checkOpen();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw closedError(this.description);
  }
}
