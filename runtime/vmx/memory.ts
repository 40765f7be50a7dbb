/** e820 types: "ram" is given to the guest, "reserved" is backed RAM it must not use. */
export type MemoryRegionType = "ram" | "reserved";

export interface MemoryRegion {
  readonly base: number;
  readonly length: number;
  readonly type: MemoryRegionType;
}

/** An access outside backed RAM. Devices decide whether that is a DMA error or a bug. */
export class MemoryError extends Error {
  constructor(
    message: string,
    readonly addr: number,
    readonly length: number,
  ) {
    super(message);
    this.name = "MemoryError";
  }
}

/**
 * Guest-physical memory as devices see it for DMA. An interface because the RAM may later
 * belong to an x86 emulator (v86) rather than a Uint8Array of our own. All multi-byte helpers
 * are little-endian; every access throws MemoryError unless it lies within backed RAM.
 */
export interface PhysicalMemory {
  /** Bytes of backed RAM, from physical address 0. */
  readonly size: number;
  /** e820-style map: sorted, non-overlapping, covering [0, size). */
  readonly regions: readonly MemoryRegion[];
  /** True only when [addr, addr+length) lies within one guest-visible RAM region. */
  isGuestRange(addr: number, length: number): boolean;
  /** True when [addr, addr+length) is backed RAM of any type (the VMM's own included). */
  isPhysicalRange(addr: number, length: number): boolean;
  /** A copy of the bytes. */
  read(addr: number, length: number): Uint8Array;
  /** Copies target.length bytes from addr into target (no allocation). */
  readInto(addr: number, target: Uint8Array): void;
  /**
   * Optional: a live view of [addr, addr+length), so a device can DMA without a copy (a disk
   * reads straight into guest RAM). Only for RAM where a plain store is a correct DMA write;
   * an emulator that must see every write (v86 keeps its JIT coherent) leaves it out.
   */
  liveView?(addr: number, length: number): Uint8Array;
  /** Optional: the physical address of a view of this memory's own bytes (as liveView returns). */
  addressOf?(view: Uint8Array): number | undefined;
  write(addr: number, bytes: Uint8Array): void;
  fill(addr: number, length: number, value: number): void;
  readU8(addr: number): number;
  readU16(addr: number): number;
  readU32(addr: number): number;
  readU64(addr: number): bigint;
  writeU8(addr: number, value: number): void;
  writeU16(addr: number, value: number): void;
  writeU32(addr: number, value: number): void;
  writeU64(addr: number, value: bigint): void;
}

export interface GuestMemoryOptions {
  /** Backed physical RAM in bytes. */
  ramBytes: number;
  /** Bytes at the top of RAM kept by the VMM and hidden from the guest (default 0). */
  vmmBytes?: number;
  /** Further reserved ranges, e.g. firmware areas. */
  reserved?: readonly { base: number; length: number }[];
}

/** Identity-mapped RAM in a Uint8Array, with part of it reserved for the VMM. */
export class GuestMemory implements PhysicalMemory {
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly regions: readonly MemoryRegion[];
  /** The VMM's hidden region at the top of RAM, when vmmBytes > 0. */
  readonly vmmRegion: MemoryRegion | undefined;
  readonly #view: DataView;

  constructor(options: GuestMemoryOptions) {
    const { ramBytes, vmmBytes = 0, reserved = [] } = options;
    if (!Number.isSafeInteger(ramBytes) || ramBytes <= 0)
      throw new RangeError(`GuestMemory: invalid RAM size ${ramBytes}`);
    if (!Number.isSafeInteger(vmmBytes) || vmmBytes < 0 || vmmBytes > ramBytes) {
      throw new RangeError(
        `GuestMemory: invalid VMM reservation of ${vmmBytes} bytes in ${ramBytes} bytes of RAM`,
      );
    }
    this.bytes = new Uint8Array(ramBytes);
    this.size = ramBytes;
    this.#view = new DataView(this.bytes.buffer);
    const holes = [...reserved];
    if (vmmBytes > 0) holes.push({ base: ramBytes - vmmBytes, length: vmmBytes });
    this.regions = buildMap(ramBytes, holes);
    this.vmmRegion =
      vmmBytes > 0 ? { base: ramBytes - vmmBytes, length: vmmBytes, type: "reserved" } : undefined;
  }

  isPhysicalRange(addr: number, length: number): boolean {
    return validRange(addr, length) && addr + length <= this.size;
  }

  isGuestRange(addr: number, length: number): boolean {
    if (!validRange(addr, length)) return false;
    for (const region of this.regions) {
      if (region.type === "ram" && addr >= region.base && addr + length <= region.base + region.length)
        return true;
    }
    return false;
  }

  read(addr: number, length: number): Uint8Array {
    this.#check(addr, length);
    return this.bytes.slice(addr, addr + length);
  }

  readInto(addr: number, target: Uint8Array): void {
    this.#check(addr, target.length);
    target.set(this.bytes.subarray(addr, addr + target.length));
  }

  liveView(addr: number, length: number): Uint8Array {
    this.#check(addr, length);
    return this.bytes.subarray(addr, addr + length);
  }

  addressOf(view: Uint8Array): number | undefined {
    if (view.buffer !== this.bytes.buffer) return undefined;
    const addr = view.byteOffset - this.bytes.byteOffset;
    return addr >= 0 && addr + view.length <= this.size ? addr : undefined;
  }

  write(addr: number, bytes: Uint8Array): void {
    this.#check(addr, bytes.length);
    this.bytes.set(bytes, addr);
  }

  fill(addr: number, length: number, value: number): void {
    this.#check(addr, length);
    this.bytes.fill(value, addr, addr + length);
  }

  readU8(addr: number): number {
    this.#check(addr, 1);
    return this.bytes[addr]!;
  }

  readU16(addr: number): number {
    this.#check(addr, 2);
    return this.#view.getUint16(addr, true);
  }

  readU32(addr: number): number {
    this.#check(addr, 4);
    return this.#view.getUint32(addr, true);
  }

  readU64(addr: number): bigint {
    this.#check(addr, 8);
    return this.#view.getBigUint64(addr, true);
  }

  writeU8(addr: number, value: number): void {
    this.#check(addr, 1);
    this.bytes[addr] = value;
  }

  writeU16(addr: number, value: number): void {
    this.#check(addr, 2);
    this.#view.setUint16(addr, value, true);
  }

  writeU32(addr: number, value: number): void {
    this.#check(addr, 4);
    this.#view.setUint32(addr, value, true);
  }

  writeU64(addr: number, value: bigint): void {
    this.#check(addr, 8);
    this.#view.setBigUint64(addr, value, true);
  }

  #check(addr: number, length: number): void {
    if (!this.isPhysicalRange(addr, length)) {
      throw new MemoryError(
        `physical access of ${length} bytes at ${hex(addr)} is outside RAM (${hex(this.size)} bytes)`,
        addr,
        length,
      );
    }
  }
}

function validRange(addr: number, length: number): boolean {
  return Number.isSafeInteger(addr) && Number.isSafeInteger(length) && addr >= 0 && length >= 0;
}

function hex(n: number): string {
  return Number.isFinite(n) ? `0x${n.toString(16)}` : String(n);
}

/** Splits [0, size) into alternating ram/reserved regions; overlapping holes are merged. */
function buildMap(size: number, holes: readonly { base: number; length: number }[]): MemoryRegion[] {
  for (const hole of holes) {
    if (!validRange(hole.base, hole.length) || hole.base + hole.length > size) {
      throw new RangeError(
        `GuestMemory: reserved range ${hex(hole.base)}+${hex(hole.length)} is outside RAM`,
      );
    }
  }
  const sorted = holes.filter((h) => h.length > 0).sort((a, b) => a.base - b.base);
  const regions: MemoryRegion[] = [];
  let cursor = 0;
  for (let i = 0; i < sorted.length; ) {
    const base = sorted[i]!.base;
    let end = base + sorted[i]!.length;
    for (i++; i < sorted.length && sorted[i]!.base <= end; i++)
      end = Math.max(end, sorted[i]!.base + sorted[i]!.length);
    if (base > cursor) regions.push({ base: cursor, length: base - cursor, type: "ram" });
    regions.push({ base, length: end - base, type: "reserved" });
    cursor = end;
  }
  if (cursor < size) regions.push({ base: cursor, length: size - cursor, type: "ram" });
  return regions;
}
