import { type BlockBackend, type BlockSource, checkRange, checkTarget, SECTOR_SIZE } from "./types.ts";

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
    this.#applyWritten(lba, count, data, 0);
    return data;
  }

  /** The image's sectors into the caller's buffer (without a copy when the image has readInto). */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    checkRange(this.description, this.sectors, lba, count);
    checkTarget(this.description, count, target, offset);
    if (this.base.readInto !== undefined) await this.base.readInto(lba, count, target, offset);
    else target.set(await this.base.read(lba, count), offset);
    this.#applyWritten(lba, count, target, offset);
  }

  /** Lays the sectors written so far over image data of [lba, lba + count) at target[offset]. */
  #applyWritten(lba: number, count: number, target: Uint8Array, offset: number): void {
    if (this.written.size === 0) return;
    for (let i = 0; i < count; i++) {
      const sector = this.written.get(lba + i);
      if (sector) target.set(sector, offset + i * SECTOR_SIZE);
    }
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
