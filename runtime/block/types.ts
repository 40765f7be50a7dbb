/** Every block device in medic speaks 512-byte sectors. */
export const SECTOR_SIZE = 512;

/**
 * A read-only source of sectors: an OS image on a local file, an NBD export, an HTTP server,
 * or a generated pattern. LBAs and counts are sector numbers (safe integers: 2^53 sectors is
 * far beyond any disk).
 */
export interface BlockSource {
  /** Size in sectors. */
  readonly sectors: number;
  /** Reads `count` sectors from `lba`; resolves with exactly count * 512 fresh bytes or rejects. */
  read(lba: number, count: number): Promise<Uint8Array>;
  /**
   * Optional, for hot paths that own a destination already (a DMA target in guest RAM, a
   * reusable buffer): reads `count` sectors from `lba` into target[offset, offset + count * 512)
   * instead of allocating fresh bytes. Same range checks and errors as read(); a target too
   * small is a "range" error. If it rejects, the target may hold part of the data. Callers
   * fall back to read() when a source does not have it.
   */
  readInto?(lba: number, count: number, target: Uint8Array, offset?: number): Promise<void>;
  /** Releases files, sockets and timers. Idempotent. */
  close(): Promise<void>;
  /** A short human description for logs and errors ("file disk.img", "nbd://127.0.0.1:10809/x"). */
  readonly description: string;
}

/** A writable block device: the local disk of a deployment, the disk behind an emulated controller. */
export interface BlockBackend extends BlockSource {
  /** Writes whole sectors (data.length is a multiple of 512) at `lba`. */
  write(lba: number, data: Uint8Array): Promise<void>;
  /** Resolves once every write that resolved before this call is durable. */
  flush(): Promise<void>;
}

/** Raised for any block-level failure; `code` lets callers decide between retry and report. */
export class BlockError extends Error {
  constructor(
    message: string,
    readonly code: "range" | "io" | "short-read" | "closed" | "config" | "changed" | "timeout" | "protocol",
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "BlockError";
  }
}

/**
 * Checks that target[offset, offset + count * 512) exists, for readInto; returns the byte length.
 * Call after checkRange (count is then a safe non-negative integer).
 */
export function checkTarget(description: string, count: number, target: Uint8Array, offset: number): number {
  const bytes = count * SECTOR_SIZE;
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > target.length) {
    throw new BlockError(
      `${description}: a target of ${target.length} bytes has no room for ${bytes} bytes at offset ${offset}`,
      "range",
    );
  }
  return bytes;
}

/** Checks that [lba, lba+count) lies within a device of `sectors` sectors. */
export function checkRange(description: string, sectors: number, lba: number, count: number): void {
  if (
    !Number.isSafeInteger(lba) ||
    !Number.isSafeInteger(count) ||
    lba < 0 ||
    count < 0 ||
    lba + count > sectors
  ) {
    throw new BlockError(
      `${description}: sectors ${lba}..${lba + count} are outside the device (${sectors} sectors)`,
      "range",
    );
  }
}
