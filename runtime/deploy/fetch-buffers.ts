/**
 * Reusable buffers for background fetches, one fetch's worth each. They are carved from an arena
 * while it lasts — the VMM's DMA memory, so the mediator's own writes send them to the disk from
 * where they lie, without a copy — and come from the heap after that. A buffer is handed out
 * again only once none of its blocks needs it, so the copy makes no garbage.
 */
export class FetchBuffers {
  readonly #size: number;
  readonly #arena: Uint8Array | undefined;
  readonly #slices: number;
  #carved = 0;
  readonly #free: Uint8Array[] = [];
  /** Blocks of each buffer in use still cached or on their way, by buffer identity (see #key). */
  readonly #users = new Map<ArrayBufferLike | number, number>();
  #closed = false;

  /** `size`: bytes per buffer; `arena`: memory to carve them from first (optional). */
  constructor(size: number, arena?: Uint8Array) {
    this.#size = size;
    this.#arena = arena;
    this.#slices = arena === undefined ? 0 : Math.floor(arena.length / size);
  }

  /** A free buffer of the pool's size (its old contents are undefined). */
  take(): Uint8Array {
    const free = this.#free.pop();
    if (free !== undefined) return free;
    if (this.#carved < this.#slices) {
      const at = this.#carved++ * this.#size;
      return this.#arena!.subarray(at, at + this.#size);
    }
    return new Uint8Array(this.#size);
  }

  /** `buffer` (from take) now holds `users` blocks; it returns to the pool when all are released. */
  hold(buffer: Uint8Array, users: number): void {
    this.#users.set(this.#key(buffer), users);
  }

  /** True when `view` lies in a buffer in use: its bytes change once that buffer is reused. */
  owns(view: Uint8Array): boolean {
    return this.#users.has(this.#key(view));
  }

  /** One block of the buffer `view` lies in no longer needs it. */
  release(view: Uint8Array): void {
    const key = this.#key(view);
    const users = this.#users.get(key);
    if (users === undefined) return;
    if (users > 1) this.#users.set(key, users - 1);
    else this.#giveBack(view);
  }

  /** The buffer `view` lies in is free again. */
  #giveBack(view: Uint8Array): void {
    const key = this.#key(view);
    if (!this.#users.delete(key) || this.#closed) return;
    this.#free.push(
      typeof key === "number"
        ? this.#arena!.subarray(key * this.#size, (key + 1) * this.#size)
        : new Uint8Array(key),
    );
  }

  /** From now on buffers given back are dropped, not kept for reuse. */
  close(): void {
    this.#closed = true;
    this.#free.length = 0;
  }

  /** Arena buffers are known by their index (they share one ArrayBuffer), heap ones by their ArrayBuffer. */
  #key(view: Uint8Array): ArrayBufferLike | number {
    const arena = this.#arena;
    if (arena !== undefined && view.buffer === arena.buffer) {
      const offset = view.byteOffset - arena.byteOffset;
      if (offset >= 0 && offset < this.#slices * this.#size) return Math.floor(offset / this.#size);
    }
    return view.buffer;
  }
}
