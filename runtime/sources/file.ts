import { type FileHandle, open } from "node:fs/promises";
import { readFully } from "../block/file.ts";
import { BlockError, type BlockSource, checkRange, checkTarget, SECTOR_SIZE } from "../block/types.ts";
import { type Clock, trackIo } from "../vmx/clock.ts";
import { errorMessage } from "./options.ts";

export interface FileSourceOptions {
  /** On a virtual clock, reads are tracked so simulated time does not run ahead of them. */
  clock?: Clock;
}

/** A read-only OS image in a local regular file, read with positional reads. */
export class FileSource implements BlockSource {
  readonly description: string;
  readonly #handle: FileHandle;
  readonly #clock: Clock | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();
  #closing: Promise<void> | undefined;

  private constructor(
    readonly path: string,
    handle: FileHandle,
    readonly sectors: number,
    clock: Clock | undefined,
  ) {
    this.#handle = handle;
    this.#clock = clock;
    this.description = `file ${path}`;
  }

  static async open(path: string, options: FileSourceOptions = {}): Promise<FileSource> {
    const description = `file ${path}`;
    let handle: FileHandle;
    try {
      handle = await trackIo(options.clock, open(path, "r"));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw new BlockError(`${description}: no such file`, "config", { cause: error });
      if (code === "EACCES" || code === "EPERM") {
        throw new BlockError(`${description}: permission denied`, "config", { cause: error });
      }
      if (code === "EISDIR")
        throw new BlockError(`${description}: is a directory`, "config", { cause: error });
      throw new BlockError(`${description}: cannot open: ${errorMessage(error)}`, "io", { cause: error });
    }
    try {
      const stat = await trackIo(options.clock, handle.stat());
      if (!stat.isFile()) {
        throw new BlockError(`${description}: not a regular file (an image source must be a file)`, "config");
      }
      if (stat.size % SECTOR_SIZE !== 0) {
        throw new BlockError(
          `${description}: size ${stat.size} bytes is not a multiple of ${SECTOR_SIZE} ` +
            `(${stat.size % SECTOR_SIZE} bytes past the last whole sector); is it a raw disk image?`,
          "config",
        );
      }
      return new FileSource(path, handle, stat.size / SECTOR_SIZE, options.clock);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    const buffer = new Uint8Array(count * SECTOR_SIZE);
    await this.readInto(lba, count, buffer);
    return buffer;
  }

  /** Positional reads straight into the caller's buffer (the engine's fetch buffers). */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    if (this.#closing !== undefined) throw new BlockError(`${this.description}: source is closed`, "closed");
    checkRange(this.description, this.sectors, lba, count);
    const bytes = checkTarget(this.description, count, target, offset);
    const work = this.#readFully(target.subarray(offset, offset + bytes), lba * SECTOR_SIZE);
    this.#inFlight.add(work);
    try {
      await trackIo(this.#clock, work);
    } finally {
      this.#inFlight.delete(work);
    }
  }

  /** Waits for reads in flight (so none sees a closed handle), then closes the file. */
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
      (at, error) =>
        new BlockError(`${this.description}: read error at byte ${at}: ${errorMessage(error)}`, "io", {
          cause: error,
        }),
      (at) =>
        new BlockError(
          `${this.description}: short read: the file ends at byte ${at} (sector ${Math.floor(at / SECTOR_SIZE)}) ` +
            `but it had ${this.sectors} sectors when opened; was it truncated?`,
          "short-read",
        ),
    );
  }
}
