import { type BlockBackend, type BlockSource, checkRange, SECTOR_SIZE } from "../block/types.ts";

/**
 * A writable disk over a read-only source: written sectors live in a Map, everything else is
 * read from the source. Lets a 2 GiB PatternSource stand in for a guest's local disk without
 * 2 GiB of RAM.
 */
export class CowDisk implements BlockBackend {
  readonly sectors: number;
  readonly description: string;
  readonly #written = new Map<number, Uint8Array>();
  #closed = false;

  constructor(readonly base: BlockSource) {
    this.sectors = base.sectors;
    this.description = `copy-on-write over ${base.description}`;
  }

  /** Sectors written so far (each counted once). */
  get writtenSectors(): number {
    return this.#written.size;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    this.#check(lba, count);
    const data = await this.base.read(lba, count);
    if (this.#written.size > 0) {
      for (let i = 0; i < count; i++) {
        const sector = this.#written.get(lba + i);
        if (sector !== undefined) data.set(sector, i * SECTOR_SIZE);
      }
    }
    return data;
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    if (data.length % SECTOR_SIZE !== 0) {
      throw new RangeError(`${this.description}: write of ${data.length} bytes is not whole sectors`);
    }
    const count = data.length / SECTOR_SIZE;
    this.#check(lba, count);
    for (let i = 0; i < count; i++) {
      this.#written.set(lba + i, data.slice(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE));
    }
  }

  async flush(): Promise<void> {
    if (this.#closed) throw new Error(`${this.description}: closed`);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.base.close();
  }

  #check(lba: number, count: number): void {
    if (this.#closed) throw new Error(`${this.description}: closed`);
    checkRange(this.description, this.sectors, lba, count);
  }
}
