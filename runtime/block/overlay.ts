import { type BlockBackend, type BlockSource, checkRange, SECTOR_SIZE } from "./types.ts";

/**
 * A writable disk over a read-only image: writes land in memory, sector by sector, and reads
 * see them over the image. The replayer's disk in bare and passthrough modes (the image is
 * "already local"), without copying a whole image into memory.
 */
export class OverlayBackend implements BlockBackend {
  readonly sectors: number;
  readonly description: string;
  private readonly written = new Map<number, Uint8Array>();

  constructor(private readonly base: BlockSource) {
    this.sectors = base.sectors;
    this.description = `overlay on ${base.description}`;
  }

  /** Sectors written so far. */
  get writtenSectors(): number {
    return this.written.size;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    checkRange(this.description, this.sectors, lba, count);
    const data = await this.base.read(lba, count);
    if (this.written.size === 0) return data;
    for (let i = 0; i < count; i++) {
      const sector = this.written.get(lba + i);
      if (sector) data.set(sector, i * SECTOR_SIZE);
    }
    return data;
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    const count = data.length / SECTOR_SIZE;
    checkRange(this.description, this.sectors, lba, count);
    for (let i = 0; i < count; i++)
      this.written.set(lba + i, data.slice(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE));
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.written.clear();
    await this.base.close();
  }
}
