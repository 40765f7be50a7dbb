/**
 * A bump allocator over a range of guest-physical RAM: what a tiny guest kernel uses for its
 * DMA structures (command lists, received-FIS areas, command tables) and bounce buffers.
 * Nothing is ever freed; the driver allocates once at start-up.
 */
export class GuestAllocator {
  #next: number;

  constructor(
    /** First usable guest-physical address (inclusive). */
    readonly base: number,
    /** End of the usable range (exclusive). */
    readonly end: number,
  ) {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(end) || base < 0 || end < base) {
      throw new RangeError(`GuestAllocator: invalid range 0x${base.toString(16)}..0x${end.toString(16)}`);
    }
    this.#next = base;
  }

  /** Allocates `bytes` at a multiple of `align` (a power of two); throws when RAM runs out. */
  alloc(bytes: number, align = 8, what = "buffer"): number {
    if (!Number.isSafeInteger(bytes) || bytes <= 0)
      throw new RangeError(`GuestAllocator: invalid size ${bytes}`);
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new RangeError(`GuestAllocator: alignment ${align} is not a power of two`);
    }
    const address = Math.ceil(this.#next / align) * align;
    if (address + bytes > this.end) {
      throw new RangeError(
        `guest RAM exhausted: ${what} of ${bytes} bytes does not fit (${this.end - this.#next} bytes left ` +
          `below 0x${this.end.toString(16)})`,
      );
    }
    this.#next = address + bytes;
    return address;
  }

  /** Bytes still free (ignoring alignment). */
  get free(): number {
    return this.end - this.#next;
  }

  get used(): number {
    return this.#next - this.base;
  }
}
