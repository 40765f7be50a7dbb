import { type Clock, RealClock } from "./clock.ts";
import type { PhysicalMemory } from "./memory.ts";

/** Access sizes a device sees; 8-byte guest accesses are split in two. */
export type AccessSize = 1 | 2 | 4;
export type GuestAccessSize = AccessSize | 8;

/** A memory-mapped register block. Synchronous, because MMIO is synchronous for the CPU. */
export interface MmioDevice {
  /** Returns the register value (a uint32, only the low `size` bytes count). */
  read(offset: number, size: AccessSize): number;
  write(offset: number, size: AccessSize, value: number): void;
}

export type VmExitReason = "ept-violation" | "external-interrupt";

export interface MmioQualification {
  /** Guest-physical address of the access. */
  readonly addr: number;
  /** Offset within the region. */
  readonly offset: number;
  readonly size: AccessSize;
  readonly write: boolean;
  /** The value written (masked to size); 0 for reads. */
  readonly value: number;
}

/**
 * An EPT violation on a trapped MMIO region. The host reuses one object for every exit, so it
 * is only valid during the handler call: copy what you keep.
 */
export interface MmioExit {
  readonly reason: "ept-violation";
  readonly region: MmioRegion;
  readonly qualification: MmioQualification;
}

/** The device's interrupt line changed while the VMM intercepts interrupts. */
export interface InterruptExit {
  readonly reason: "external-interrupt";
  readonly qualification: { readonly level: boolean };
}

export type VmExit = MmioExit | InterruptExit;

/**
 * Services an MMIO exit, BitVisor style: return undefined for "not handled" and the host
 * passes the access through to the device unchanged. Otherwise the access is handled: for a
 * read the return value is what the guest sees; for a write the device sees nothing unless
 * the handler forwards it (return HANDLED).
 */
export type MmioExitHandler = (exit: MmioExit, device: MmioDevice) => number | undefined;

/** Return value of an exit handler that consumed a write. */
export const HANDLED = 0;

/**
 * Decides what the guest sees when the device's line changes while the VMM is on: return the
 * guest line level, or undefined to pass the device level through. Held-back interrupts can be
 * injected later with VmxHost.setGuestIrq.
 */
export type IrqFilter = (exit: InterruptExit, host: VmxHost) => boolean | undefined;

export class VmxError extends Error {
  constructor(
    message: string,
    readonly code: "unmapped" | "range" | "size" | "overlap" | "state" | "nested" | "internal",
  ) {
    super(message);
    this.name = "VmxError";
  }
}

export interface MmioRegionStats {
  exitReads: number;
  exitWrites: number;
  directReads: number;
  directWrites: number;
}

export interface MmioRegionOptions {
  name: string;
  base: number;
  size: number;
  device: MmioDevice;
  trapped: boolean;
  handler?: MmioExitHandler;
}

/** A registered MMIO window; whether it traps is the host's business (see VmxHost.setTrapped). */
export class MmioRegion {
  readonly name: string;
  readonly base: number;
  readonly size: number;
  readonly end: number;
  readonly device: MmioDevice;
  /** The mediator's exit handler; may be replaced at any time. */
  handler: MmioExitHandler | undefined;
  readonly stats: MmioRegionStats = { exitReads: 0, exitWrites: 0, directReads: 0, directWrites: 0 };
  /** @internal Written only by VmxHost: it enforces that nothing traps after turnOff. */
  _trapped: boolean;

  constructor(options: MmioRegionOptions) {
    this.name = options.name;
    this.base = options.base;
    this.size = options.size;
    this.end = options.base + options.size;
    this.device = options.device;
    this.handler = options.handler;
    this._trapped = options.trapped;
  }

  /** Whether guest accesses cause VM exits (the EPT entry is not present). */
  get trapped(): boolean {
    return this._trapped;
  }
}

export interface VmxStats {
  /** Every VM exit. */
  exits: number;
  exitsByReason: Record<VmExitReason, number>;
  /** Guest MMIO accesses that went straight to a device (untrapped regions, or after turnOff). */
  directAccesses: number;
  /**
   * Real time (performance.now) spent servicing exits: handlers, filters and pass-through.
   * Exact unless VmxHost.exitTimingInterval is above 1; then an unbiased estimate.
   */
  exitTimeMs: number;
  /** Exits attempted after turnOff. Each one also threw; it must stay 0. */
  exitsAfterOff: number;
}

/** A device's physical interrupt line (level-triggered). */
export class IrqLine {
  #level = false;

  constructor(private readonly onChange: (level: boolean) => void) {}

  get level(): boolean {
    return this.#level;
  }

  set(level: boolean): void {
    if (level === this.#level) return;
    this.#level = level;
    this.onChange(level);
  }
}

export interface VmxHostOptions {
  memory: PhysicalMemory;
  clock?: Clock;
}

/**
 * The emulated VMX host (Intel VT-x with EPT, as BitVisor uses it): MMIO regions that trap to
 * the mediator or go straight to the device, an interrupt line the mediator may filter, and
 * de-virtualization. After turnOff no VM exit of any kind can happen, and the counters prove it.
 */
export class VmxHost {
  readonly memory: PhysicalMemory;
  readonly clock: Clock;
  /** Driven by the device; what the guest sees is guestIrqPending. */
  readonly deviceIrq: IrqLine;
  readonly stats: VmxStats = {
    exits: 0,
    exitsByReason: { "ept-violation": 0, "external-interrupt": 0 },
    directAccesses: 0,
    exitTimeMs: 0,
    exitsAfterOff: 0,
  };
  /**
   * 1 (the default): every exit is timed, with two performance.now() calls (about 0.1 µs each
   * on some hosts: a tenth of a cheap exit). N > 1: each exit is timed with probability 1/N and
   * counted N times, so stats.exitTimeMs estimates the same total at a fraction of the cost
   * (for benchmarks with millions of exits). Exit counts are always exact.
   */
  exitTimingInterval = 1;
  /** xorshift32 state choosing the timed exits: random, so no periodic exit pattern aliases. */
  #timingState = 0x2545f491;
  /** Weight of the exit being timed (exitTimingInterval when it was chosen). */
  #timingWeight = 1;
  readonly #regions: MmioRegion[] = [];
  #lastRegion: MmioRegion | undefined;
  #on = true;
  #turnedOffAt: number | undefined;
  #inExit = false;
  #guestIrq = false;
  /** Device level last presented to the VMM, to spot changes that happened during an exit. */
  #vmmSeenIrq = false;
  #irqDeferred = false;
  #irqFilter: IrqFilter | undefined;
  readonly #irqListeners = new Set<(level: boolean) => void>();
  // One reusable record per exit kind: exits are frequent and must not allocate.
  readonly #qualification = { addr: 0, offset: 0, size: 4 as AccessSize, write: false, value: 0 };
  readonly #mmioExit: {
    reason: "ept-violation";
    region: MmioRegion | undefined;
    qualification: MmioQualification;
  } = { reason: "ept-violation", region: undefined, qualification: this.#qualification };
  readonly #irqQualification = { level: false };
  readonly #irqExit: InterruptExit = { reason: "external-interrupt", qualification: this.#irqQualification };

  constructor(options: VmxHostOptions) {
    this.memory = options.memory;
    this.clock = options.clock ?? new RealClock();
    this.deviceIrq = new IrqLine((level) => this.#deviceIrqChanged(level));
  }

  // ---- MMIO regions ----

  addMmio(options: MmioRegionOptions): MmioRegion {
    const { name, base, size } = options;
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new VmxError(`MMIO region ${name}: invalid base ${base} / size ${size}`, "range");
    }
    if (options.trapped && !this.#on)
      throw new VmxError(`MMIO region ${name}: cannot trap after turnOff`, "state");
    for (const other of this.#regions) {
      if (other.name === name) throw new VmxError(`MMIO region ${name}: name already used`, "overlap");
      if (base < other.end && other.base < base + size) {
        throw new VmxError(`MMIO region ${name} overlaps ${other.name}`, "overlap");
      }
    }
    const region = new MmioRegion(options);
    this.#regions.push(region);
    return region;
  }

  get regions(): readonly MmioRegion[] {
    return this.#regions;
  }

  region(name: string): MmioRegion | undefined {
    return this.#regions.find((r) => r.name === name);
  }

  /** Switches trapping of one region, as clearing or restoring its EPT entries does. */
  setTrapped(region: MmioRegion, trapped: boolean): void {
    this.#own(region);
    if (trapped && !this.#on)
      throw new VmxError(`MMIO region ${region.name}: cannot trap after turnOff`, "state");
    region._trapped = trapped;
  }

  /** Stops trapping one region, or every region when none is given (de-virtualization). */
  dropTraps(region?: MmioRegion): void {
    if (region !== undefined) this.setTrapped(region, false);
    else for (const r of this.#regions) r._trapped = false;
  }

  /**
   * Leaves the machine to the guest for good: no region traps, the guest interrupt line
   * follows the device, and any later attempt to exit throws and is counted. Idempotent.
   */
  turnOff(): void {
    if (!this.#on) return;
    this.dropTraps();
    this.#on = false;
    this.#turnedOffAt = this.clock.now();
    this.#irqFilter = undefined;
    this.#irqDeferred = false;
    this.#setGuestLine(this.deviceIrq.level);
  }

  get on(): boolean {
    return this.#on;
  }

  /** Time of turnOff on the host's clock; undefined while on. */
  get turnedOffAt(): number | undefined {
    return this.#turnedOffAt;
  }

  // ---- Guest accesses ----

  /**
   * A guest MMIO read. 8-byte reads are split into two 4-byte accesses (low, then high; each
   * may exit) and return a bigint; smaller ones return a number.
   */
  mmioRead(addr: number, size: 8): bigint;
  mmioRead(addr: number, size: AccessSize): number;
  mmioRead(addr: number, size: GuestAccessSize): number | bigint;
  mmioRead(addr: number, size: GuestAccessSize): number | bigint {
    if (size === 8) {
      const low = this.#access(addr, 4, false, 0);
      const high = this.#access(addr + 4, 4, false, 0);
      return (BigInt(high) << 32n) | BigInt(low);
    }
    return this.#access(addr, size, false, 0);
  }

  /** A guest MMIO write; 8-byte writes are split like reads (low dword first). */
  mmioWrite(addr: number, size: AccessSize, value: number): void;
  mmioWrite(addr: number, size: 8, value: bigint | number): void;
  mmioWrite(addr: number, size: GuestAccessSize, value: number | bigint): void;
  mmioWrite(addr: number, size: GuestAccessSize, value: number | bigint): void {
    if (size === 8) {
      let low: number;
      let high: number;
      if (typeof value === "bigint") {
        low = Number(value & 0xffff_ffffn);
        high = Number((value >> 32n) & 0xffff_ffffn);
      } else {
        low = value >>> 0;
        high = Math.floor(value / 0x1_0000_0000) >>> 0;
      }
      this.#access(addr, 4, true, low);
      this.#access(addr + 4, 4, true, high);
      return;
    }
    this.#access(addr, size, true, Number(value));
  }

  #access(addr: number, size: AccessSize, write: boolean, value: number): number {
    if (size !== 1 && size !== 2 && size !== 4)
      throw new VmxError(`invalid MMIO access size ${size}`, "size");
    const region = this.#find(addr, size);
    const offset = addr - region.base;
    if (region._trapped) return this.#exitMmio(region, addr, offset, size, write, value);
    this.stats.directAccesses++;
    if (write) {
      region.stats.directWrites++;
      region.device.write(offset, size, mask(value, size));
      return 0;
    }
    region.stats.directReads++;
    return mask(region.device.read(offset, size), size);
  }

  #find(addr: number, size: number): MmioRegion {
    const last = this.#lastRegion;
    if (last !== undefined && addr >= last.base && addr + size <= last.end) return last;
    for (const region of this.#regions) {
      if (addr >= region.base && addr < region.end) {
        if (addr + size > region.end) {
          throw new VmxError(
            `MMIO access of ${size} bytes at 0x${addr.toString(16)} crosses the end of ${region.name}`,
            "range",
          );
        }
        this.#lastRegion = region;
        return region;
      }
    }
    throw new VmxError(`MMIO access at 0x${addr.toString(16)} hits no region`, "unmapped");
  }

  #exitMmio(
    region: MmioRegion,
    addr: number,
    offset: number,
    size: AccessSize,
    write: boolean,
    value: number,
  ): number {
    this.#enterExit("ept-violation");
    const start = this.#startTiming();
    try {
      if (write) region.stats.exitWrites++;
      else region.stats.exitReads++;
      const written = write ? mask(value, size) : 0;
      const q = this.#qualification;
      q.addr = addr;
      q.offset = offset;
      q.size = size;
      q.write = write;
      q.value = written;
      this.#mmioExit.region = region;
      const handled = region.handler?.(this.#mmioExit as MmioExit, region.device);
      if (handled !== undefined) return write ? 0 : mask(handled, size);
      if (write) {
        region.device.write(offset, size, written);
        return 0;
      }
      return mask(region.device.read(offset, size), size);
    } finally {
      this.#leaveExit(start);
    }
  }

  // ---- Interrupts ----

  /** What the guest's interrupt controller sees. */
  get guestIrqPending(): boolean {
    return this.#guestIrq;
  }

  /** Installs (or removes) the mediator's interrupt filter; without one the guest follows the device. */
  setIrqFilter(filter: IrqFilter | undefined): void {
    if (!this.#on && filter !== undefined)
      throw new VmxError("cannot filter interrupts after turnOff", "state");
    this.#irqFilter = filter;
  }

  /** Sets the guest line from the mediator (inject or withdraw); only while the VMM is on. */
  setGuestIrq(level: boolean): void {
    if (!this.#on)
      throw new VmxError("setGuestIrq after turnOff: the guest line follows the device", "state");
    this.#setGuestLine(level);
  }

  /** Calls `listener` on every change of the guest line; returns the unsubscribe function. */
  onGuestIrq(listener: (level: boolean) => void): () => void {
    this.#irqListeners.add(listener);
    return () => this.#irqListeners.delete(listener);
  }

  #deviceIrqChanged(level: boolean): void {
    if (!this.#on) {
      this.#setGuestLine(level);
      return;
    }
    // An interrupt raised while the VMM runs (e.g. by a register write in a handler) only
    // exits once the current exit is over, as a pending external interrupt would.
    if (this.#inExit) {
      this.#irqDeferred = true;
      return;
    }
    this.#exitIrq();
  }

  #exitIrq(): void {
    const level = this.deviceIrq.level;
    this.#enterExit("external-interrupt");
    const start = this.#startTiming();
    try {
      this.#vmmSeenIrq = level;
      this.#irqQualification.level = level;
      const decided = this.#irqFilter?.(this.#irqExit, this);
      this.#setGuestLine(decided ?? level);
    } finally {
      this.#leaveExit(start);
    }
  }

  #setGuestLine(level: boolean): void {
    if (level === this.#guestIrq) return;
    this.#guestIrq = level;
    for (const listener of this.#irqListeners) listener(level);
  }

  // ---- Exit bookkeeping ----

  #enterExit(reason: VmExitReason): void {
    if (!this.#on) {
      this.stats.exitsAfterOff++;
      throw new VmxError(`internal error: ${reason} VM exit after turnOff`, "internal");
    }
    if (this.#inExit) {
      throw new VmxError(`nested ${reason} VM exit: an exit handler made a guest access`, "nested");
    }
    this.#inExit = true;
    this.stats.exits++;
    this.stats.exitsByReason[reason]++;
  }

  /** The start time of an exit that is timed, or -1 (see exitTimingInterval). */
  #startTiming(): number {
    const interval = this.exitTimingInterval;
    if (interval <= 1) {
      this.#timingWeight = 1;
      return performance.now();
    }
    let x = this.#timingState;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#timingState = x;
    if ((x >>> 0) % interval !== 0) return -1;
    this.#timingWeight = interval;
    return performance.now();
  }

  #leaveExit(start: number): void {
    if (start >= 0) this.stats.exitTimeMs += (performance.now() - start) * this.#timingWeight;
    this.#inExit = false;
    if (this.#irqDeferred) {
      this.#irqDeferred = false;
      if (this.#on && this.deviceIrq.level !== this.#vmmSeenIrq) this.#exitIrq();
    }
  }

  #own(region: MmioRegion): void {
    if (!this.#regions.includes(region))
      throw new VmxError(`MMIO region ${region.name} is not on this host`, "state");
  }
}

function mask(value: number, size: AccessSize): number {
  return size === 4 ? value >>> 0 : size === 2 ? value & 0xffff : value & 0xff;
}
