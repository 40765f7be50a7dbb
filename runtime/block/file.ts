import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { type Clock, trackIo } from "../vmx/clock.ts";
import { checkSectorCount, checkSectorData, closedError } from "./guards.ts";
import { dropPages } from "./page-cache.ts";
import { type BlockBackend, BlockError, checkRange, checkTarget, SECTOR_SIZE } from "./types.ts";

export interface FileBackendOptions {
  /** Open read-write; otherwise writes are rejected. */
  writable: boolean;
  /** Create the file if missing (needs writable). */
  create?: boolean;
  /**
   * Device size. A smaller file is grown (sparse) when `create` is set and is an error
   * otherwise; a larger file exposes only its first `sectors` sectors. Required for block
   * devices, whose stat size is 0.
   */
  sectors?: number;
  /** On a virtual clock, file I/O is tracked so simulated time does not run ahead of it. */
  clock?: Clock;
  /**
   * After this many bytes written since the last sync began, a datasync starts in the background
   * (nobody waits for it), as a disk drains its write cache while it works: dirty pages never pile
   * up (which here makes buffered writes several times slower) and a flush finds little left to
   * write. Pages written back are then dropped from the page cache when the native helper is
   * built (native/page_cache.c), as nbdcopy does: a deployment writes the whole image once, and
   * keeping it cached only takes fresh memory (which on some VMs costs more to touch than the copy).
   * 0 turns both off. Default 8 MiB.
   */
  writebackBytes?: number;
}

const DEFAULT_WRITEBACK_BYTES = 8 * 1024 * 1024;

/** A disk image file (or block device) accessed with positional reads and writes. */
export class FileBackend implements BlockBackend {
  readonly description: string;
  readonly #handle: FileHandle;
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #writebackBytes: number;
  #closing: Promise<void> | undefined;
  /** Bytes written since the last datasync (background or flush) began, and their byte range. */
  #unsynced = 0;
  #dirtyStart = Number.POSITIVE_INFINITY;
  #dirtyEnd = 0;
  #writeback: Promise<void> | null = null;
  /** A background datasync failed: the next flush reports it (the kernel reports it only once). */
  #writebackError: unknown = null;

  private constructor(
    readonly path: string,
    handle: FileHandle,
    readonly sectors: number,
    readonly writable: boolean,
    readonly clock: Clock | undefined,
    writebackBytes: number,
  ) {
    this.#handle = handle;
    this.#writebackBytes = writebackBytes;
    this.description = `file ${path}`;
  }

  static async open(path: string, options: FileBackendOptions): Promise<FileBackend> {
    const { writable, create = false } = options;
    if (create && !writable) throw new BlockError(`file ${path}: create requires writable`, "config");
    if (options.sectors !== undefined) checkSectorCount(`file ${path}`, options.sectors);
    let flags = writable ? constants.O_RDWR : constants.O_RDONLY;
    if (create) flags |= constants.O_CREAT;
    let handle: FileHandle;
    try {
      handle = await trackIo(options.clock, open(path, flags, 0o644));
    } catch (error) {
      throw openError(path, writable, error);
    }
    try {
      const sectors = await trackIo(options.clock, sizeDevice(path, handle, options));
      const writeback = options.writebackBytes ?? DEFAULT_WRITEBACK_BYTES;
      return new FileBackend(path, handle, sectors, writable, options.clock, writeback);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    const buffer = new Uint8Array(count * SECTOR_SIZE);
    await this.#run(this.#readFully(buffer, lba * SECTOR_SIZE));
    return buffer;
  }

  /** Positional reads straight into the caller's buffer. */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    this.#checkOpen();
    checkRange(this.description, this.sectors, lba, count);
    const bytes = checkTarget(this.description, count, target, offset);
    await this.#run(this.#readFully(target.subarray(offset, offset + bytes), lba * SECTOR_SIZE));
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    this.#checkOpen();
    if (!this.writable) throw new BlockError(`${this.description}: opened read-only`, "config");
    const count = checkSectorData(this.description, data);
    checkRange(this.description, this.sectors, lba, count);
    await this.#run(this.#writeFully(data, lba * SECTOR_SIZE));
    this.#unsynced += data.length;
    this.#dirtyStart = Math.min(this.#dirtyStart, lba * SECTOR_SIZE);
    this.#dirtyEnd = Math.max(this.#dirtyEnd, lba * SECTOR_SIZE + data.length);
    if (this.#writebackBytes > 0 && this.#unsynced >= this.#writebackBytes && this.#writeback === null) {
      this.#startWriteback();
    }
  }

  /** Every write that completed before the call is durable when it resolves. */
  async flush(): Promise<void> {
    this.#checkOpen();
    if (!this.writable) return;
    // A background sync may have begun before some of those writes ended: it cannot stand in for
    // this one, but what it wrote back this one need not write.
    if (this.#writeback !== null) await this.#writeback;
    const failed = this.#writebackError;
    this.#writebackError = null;
    if (failed !== null) throw ioError(this.description, "flush (background write-back)", failed);
    const range = this.#takeDirtyRange();
    await this.#run(
      this.#handle.datasync().catch((error: unknown) => {
        throw ioError(this.description, "flush", error);
      }),
    );
    if (this.#writebackBytes > 0) await this.#run(this.#dropPages(range));
  }

  #startWriteback(): void {
    const range = this.#takeDirtyRange();
    // One operation, so that close() waits for the drop too (the descriptor must stay open).
    const writeBack = async () => {
      await this.#handle.datasync();
      await this.#dropPages(range);
    };
    const sync = this.#run(writeBack()).then(
      () => {},
      (error: unknown) => {
        this.#writebackError ??= error;
      },
    );
    this.#writeback = sync.finally(() => {
      this.#writeback = null;
    });
  }

  /** What has been written since the last sync began; the next sync starts from nothing. */
  #takeDirtyRange(): { start: number; end: number } {
    const range = { start: this.#dirtyStart, end: this.#dirtyEnd };
    this.#unsynced = 0;
    this.#dirtyStart = Number.POSITIVE_INFINITY;
    this.#dirtyEnd = 0;
    return range;
  }

  /** Drops the range's pages, now clean, from the page cache (advice: a failure changes nothing). */
  async #dropPages(range: { start: number; end: number }): Promise<void> {
    if (dropPages === null || range.end <= range.start) return;
    await dropPages(this.#handle.fd, range.start, range.end - range.start).catch(() => {});
  }

  /** Waits for in-flight requests (so none sees a closed handle mid-loop), then closes. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inFlight]);
      await this.#handle.close();
    })();
    return this.#closing;
  }

  #readFully(buffer: Uint8Array, position: number): Promise<void> {
    return readFully(
      this.#handle,
      buffer,
      position,
      (at, error) => ioError(this.description, `read at byte ${at}`, error),
      (at) =>
        new BlockError(
          `${this.description}: short read: file ends at byte ${at} (sector ${Math.floor(at / SECTOR_SIZE)}) ` +
            `but the device has ${this.sectors} sectors; was the file truncated?`,
          "short-read",
        ),
    );
  }

  async #writeFully(data: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      let bytesWritten: number;
      try {
        ({ bytesWritten } = await this.#handle.write(data, done, data.length - done, position + done));
      } catch (error) {
        throw ioError(this.description, `write at byte ${position + done}`, error);
      }
      if (bytesWritten === 0) throw new BlockError(`${this.description}: write made no progress`, "io");
      done += bytesWritten;
    }
  }

  async #run<T>(operation: Promise<T>): Promise<T> {
    this.#inFlight.add(operation);
    try {
      return await trackIo(this.clock, operation);
    } finally {
      this.#inFlight.delete(operation);
    }
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw closedError(this.description);
  }
}

async function sizeDevice(path: string, handle: FileHandle, options: FileBackendOptions): Promise<number> {
  const stat = await handle.stat();
  if (stat.isBlockDevice()) {
    if (options.sectors === undefined) {
      throw new BlockError(`file ${path}: a block device needs an explicit size in sectors`, "config");
    }
    return options.sectors;
  }
  if (!stat.isFile()) throw new BlockError(`file ${path}: not a regular file or block device`, "config");
  if (stat.size % SECTOR_SIZE !== 0) {
    throw new BlockError(
      `file ${path}: size ${stat.size} bytes is not a multiple of ${SECTOR_SIZE} (not a disk image?)`,
      "config",
    );
  }
  const fileSectors = stat.size / SECTOR_SIZE;
  const wanted = options.sectors;
  if (wanted === undefined || wanted <= fileSectors) return wanted ?? fileSectors;
  if (!options.create) {
    throw new BlockError(
      `file ${path}: has ${fileSectors} sectors, ${wanted} requested (set create to grow it)`,
      "config",
    );
  }
  await handle.truncate(wanted * SECTOR_SIZE);
  return wanted;
}

function openError(path: string, writable: boolean, error: unknown): BlockError {
  const code = (error as NodeJS.ErrnoException).code;
  const mode = writable ? "read-write" : "reading";
  switch (code) {
    case "ENOENT":
      return new BlockError(`file ${path}: no such file`, "config", { cause: error });
    case "EACCES":
    case "EPERM":
      return new BlockError(
        `file ${path}: permission denied opening for ${mode}${writable ? " (not writable)" : ""}`,
        "config",
        { cause: error },
      );
    case "EROFS":
      return new BlockError(`file ${path}: not writable (read-only file system)`, "config", { cause: error });
    case "EISDIR":
      return new BlockError(`file ${path}: is a directory`, "config", { cause: error });
    default:
      return ioError(`file ${path}`, `open for ${mode}`, error);
  }
}

function ioError(description: string, what: string, error: unknown): BlockError {
  const detail = error instanceof Error ? error.message : String(error);
  return new BlockError(`${description}: ${what} failed: ${detail}`, "io", { cause: error });
}

/**
 * Fills `buffer` from `position` with positional reads, looping over short reads; the file
 * ending first is `shortRead(at)`, a failed read `failed(at, error)`.
 */
export async function readFully(
  handle: FileHandle,
  buffer: Uint8Array,
  position: number,
  failed: (at: number, error: unknown) => Error,
  shortRead: (at: number) => Error,
): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(buffer, done, buffer.length - done, position + done));
    } catch (error) {
      throw failed(position + done, error);
    }
    if (bytesRead === 0) throw shortRead(position + done);
    done += bytesRead;
  }
}
