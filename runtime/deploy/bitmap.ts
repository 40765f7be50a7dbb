import { type FileHandle, open, readFile, rename } from "node:fs/promises";

/**
 * Which blocks of the image are durable on the local disk, persisted beside it so a deployment
 * killed at any moment resumes without refetching them. A bit is set only after the block's
 * data was flushed; the file is replaced atomically (write, fsync, rename), so a crash leaves
 * either the old or the new map, never a torn one.
 */
export interface BitmapIdentity {
  readonly blockBytes: number;
  readonly imageSectors: number;
  /** What the image was when the map was started (size, ETag...); a different image refuses to resume. */
  readonly imageTag: string;
}

const MAGIC = "medic-bitmap v1";

export class LocalBitmap {
  readonly blocks: number;
  private readonly bits: Uint8Array;
  private count = 0;
  private saving: Promise<void> = Promise.resolve();
  private dirty = false;

  private constructor(
    readonly identity: BitmapIdentity,
    readonly path: string | null,
    bits?: Uint8Array,
  ) {
    this.blocks = Math.ceil((identity.imageSectors * 512) / identity.blockBytes);
    this.bits = bits ?? new Uint8Array(Math.ceil(this.blocks / 8));
    for (let b = 0; b < this.blocks; b++) if (this.has(b)) this.count++;
  }

  /** A map kept only in memory (tests, replay). */
  static inMemory(identity: BitmapIdentity): LocalBitmap {
    return new LocalBitmap(identity, null);
  }

  /**
   * Loads the map at `path`, or starts an empty one when there is none. A map made for another
   * image or block size is an error: resuming it would mix two images.
   */
  static async load(
    path: string,
    identity: BitmapIdentity,
  ): Promise<{ bitmap: LocalBitmap; resumed: boolean }> {
    let text: Buffer;
    try {
      text = await readFile(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT")
        return { bitmap: new LocalBitmap(identity, path), resumed: false };
      throw error;
    }
    const newline = text.indexOf(0x0a);
    const header = newline < 0 ? "" : text.subarray(0, newline).toString("utf8");
    const fields = parseHeader(header);
    if (fields === null) throw new Error(`${path}: not a medic bitmap (bad header)`);
    if (
      fields.blockBytes !== identity.blockBytes ||
      fields.imageSectors !== identity.imageSectors ||
      fields.imageTag !== identity.imageTag
    ) {
      throw new Error(
        `${path} belongs to another deployment (block size ${fields.blockBytes}, ${fields.imageSectors} sectors, image ${fields.imageTag}); ` +
          `this one is block size ${identity.blockBytes}, ${identity.imageSectors} sectors, image ${identity.imageTag}. Remove it to start over.`,
      );
    }
    const blocks = Math.ceil((identity.imageSectors * 512) / identity.blockBytes);
    const bits = new Uint8Array(text.subarray(newline + 1));
    if (bits.length !== Math.ceil(blocks / 8))
      throw new Error(`${path}: truncated bitmap (${bits.length} bytes)`);
    return { bitmap: new LocalBitmap(identity, path, bits), resumed: true };
  }

  has(block: number): boolean {
    return (this.bits[block >>> 3]! & (1 << (block & 7))) !== 0;
  }

  /** Marks blocks durable (the caller has flushed them). Call save() to persist. */
  mark(block: number): void {
    if (this.has(block)) return;
    this.bits[block >>> 3]! |= 1 << (block & 7);
    this.count++;
    this.dirty = true;
  }

  get localBlocks(): number {
    return this.count;
  }

  get complete(): boolean {
    return this.count === this.blocks;
  }

  /** First block at or after `from` that is not local, or -1. */
  nextMissing(from: number): number {
    for (let b = from; b < this.blocks; b++) {
      const byte = this.bits[b >>> 3]!;
      if (byte === 0xff && (b & 7) === 0) {
        b += 7;
        continue;
      }
      if ((byte & (1 << (b & 7))) === 0) return b;
    }
    return -1;
  }

  /** Persists the map (no-op in memory); concurrent calls are serialised. */
  save(): Promise<void> {
    if (this.path === null || !this.dirty) return this.saving;
    this.dirty = false;
    const snapshot = Uint8Array.from(this.bits);
    const path = this.path;
    const header = `${MAGIC} block_bytes=${this.identity.blockBytes} sectors=${this.identity.imageSectors} image=${encodeURIComponent(this.identity.imageTag)}\n`;
    this.saving = this.saving.then(async () => {
      const temp = `${path}.tmp`;
      let handle: FileHandle | undefined;
      try {
        handle = await open(temp, "w");
        await handle.write(Buffer.from(header));
        await handle.write(snapshot);
        await handle.sync();
      } finally {
        await handle?.close();
      }
      await rename(temp, path);
    });
    return this.saving;
  }
}

function parseHeader(header: string): BitmapIdentity | null {
  const m = /^medic-bitmap v1 block_bytes=(\d+) sectors=(\d+) image=(\S*)$/.exec(header);
  if (!m) return null;
  return { blockBytes: Number(m[1]), imageSectors: Number(m[2]), imageTag: decodeURIComponent(m[3]!) };
}
