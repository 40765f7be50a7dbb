/**
 * medic's AHCI controller as a PCI function of the v86 PC: Intel ICH9 ids (8086:2922), class 0x010601,
 * ABAR in BAR5. Every guest access to the register window goes through medic's VMX host layer
 * (`Machine.mmioRead/mmioWrite`): straight to the controller in bare mode, trapped to the generated
 * mediator otherwise. The controller and the mediator reach guest memory through v86's RAM
 * (`V86PhysicalMemory`), and the guest's interrupt line (what the VMX host shows the guest) drives INTA#.
 *
 * The VMM's private memory (the mediator's own command lists, tables and buffers) is a range of v86's
 * RAM that the guest must never use. Linux is told so on its command line (`memmap=SIZE$BASE`, see
 * {@link vmmLayout}); the kernel itself is unmodified. The range ends 1 MiB below the top of RAM, where
 * the firmware keeps data of its own.
 *
 * No v86 import here: the device only sees the `PciPlatform` that `machine.ts` gives it.
 */
import { DEVICE } from "../../../generated/ahci/index.ts";
import type { BlockBackend } from "../../block/types.ts";
import { Machine } from "../../machine.ts";
import { type Clock, RealClock } from "../../vmx/clock.ts";
import { MemoryError, type MemoryRegion, type PhysicalMemory } from "../../vmx/memory.ts";
import type { PciMmioDevice, PciPlatform } from "./types.ts";

const MiB = 1024 * 1024;

/** The BAR the guest sees: a power of two holding the register window (0x1100 bytes for 32 ports). */
export const AHCI_BAR_SIZE = nextPowerOfTwo(DEVICE.barSize);
/** Free in v86's physical address map (0xFEB00000 is not), aligned to the BAR and to v86's 128 KiB. */
export const AHCI_BAR_BASE = 0xfe800000;
/** PCI slot 5 of bus 0 (v86 uses 0-4). */
export const AHCI_PCI_ID = 0x05 << 3;
/**
 * Default VMM reservation: 32 ports × 480 KiB (the mediator's stride), so one own command carries up
 * to 476 KiB. With 256 MiB of RAM it is [240 MiB, 255 MiB), inside the 16 MiB that SeaBIOS's e820 map
 * already reserves at the top of v86's RAM (measured: all zero when the kernel starts).
 */
export const DEFAULT_VMM_MIB = 15;
/** The top of RAM holds firmware data (a few bytes at 255.94 MiB): the VMM's range ends this far below. */
export const FIRMWARE_TOP_BYTES = 1 * MiB;

export interface VmmLayout {
  /** The VMM's range, hidden from the guest. */
  readonly region: MemoryRegion;
  /** What to add to the Linux command line so the kernel never touches it. */
  readonly cmdline: string;
}

/** Where the VMM's private memory goes in `ramBytes` of guest RAM, and how Linux is told to keep out. */
export function vmmLayout(ramBytes: number, vmmBytes = DEFAULT_VMM_MIB * MiB): VmmLayout {
  if (vmmBytes % MiB !== 0 || vmmBytes <= 0) throw new RangeError("the VMM reservation must be whole MiB");
  const base = ramBytes - FIRMWARE_TOP_BYTES - vmmBytes;
  if (base < 128 * MiB)
    throw new RangeError(`${ramBytes / MiB} MiB of RAM is too small for a ${vmmBytes / MiB} MiB VMM`);
  return {
    region: { base, length: vmmBytes, type: "reserved" },
    // memmap=nn$ss: mark [ss, ss+nn) reserved in the e820 map (Documentation/admin-guide/kernel-parameters).
    cmdline: `memmap=0x${vmmBytes.toString(16)}$0x${base.toString(16)}`,
  };
}

/**
 * v86's RAM as medic's `PhysicalMemory`: DMA through the platform (which keeps v86's JIT coherent),
 * with the VMM's range reserved. Guest ranges are the RAM outside it.
 */
export class V86PhysicalMemory implements PhysicalMemory {
  readonly size: number;
  readonly regions: readonly MemoryRegion[];

  constructor(
    private readonly platform: PciPlatform,
    readonly vmmRegion: MemoryRegion | undefined,
  ) {
    this.size = platform.ramBytes;
    const regions: MemoryRegion[] = [];
    if (vmmRegion) {
      if (vmmRegion.base + vmmRegion.length > this.size) throw new RangeError("the VMM range is outside RAM");
      if (vmmRegion.base > 0) regions.push({ base: 0, length: vmmRegion.base, type: "ram" });
      regions.push(vmmRegion);
      const end = vmmRegion.base + vmmRegion.length;
      if (end < this.size) regions.push({ base: end, length: this.size - end, type: "ram" });
    } else {
      regions.push({ base: 0, length: this.size, type: "ram" });
    }
    this.regions = regions;
  }

  isPhysicalRange(addr: number, length: number): boolean {
    return validRange(addr, length) && addr + length <= this.size;
  }

  isGuestRange(addr: number, length: number): boolean {
    if (!validRange(addr, length)) return false;
    return this.regions.some((r) => r.type === "ram" && addr >= r.base && addr + length <= r.base + r.length);
  }

  read(addr: number, length: number): Uint8Array {
    this.check(addr, length);
    return this.platform.dmaRead(addr, length);
  }

  readInto(addr: number, target: Uint8Array): void {
    target.set(this.read(addr, target.length));
  }

  write(addr: number, bytes: Uint8Array): void {
    this.check(addr, bytes.length);
    this.platform.dmaWrite(addr, bytes);
  }

  fill(addr: number, length: number, value: number): void {
    this.write(addr, new Uint8Array(length).fill(value));
  }

  readU8(addr: number): number {
    return this.read(addr, 1)[0]!;
  }

  readU16(addr: number): number {
    return this.view(addr, 2).getUint16(0, true);
  }

  readU32(addr: number): number {
    return this.view(addr, 4).getUint32(0, true);
  }

  readU64(addr: number): bigint {
    return this.view(addr, 8).getBigUint64(0, true);
  }

  writeU8(addr: number, value: number): void {
    this.write(addr, Uint8Array.of(value & 0xff));
  }

  writeU16(addr: number, value: number): void {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, value, true);
    this.write(addr, b);
  }

  writeU32(addr: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.write(addr, b);
  }

  writeU64(addr: number, value: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value, true);
    this.write(addr, b);
  }

  private view(addr: number, length: number): DataView {
    const bytes = this.read(addr, length);
    return new DataView(bytes.buffer, bytes.byteOffset, length);
  }

  private check(addr: number, length: number): void {
    if (!this.isPhysicalRange(addr, length)) {
      throw new MemoryError(
        `physical access of ${length} bytes at 0x${addr.toString(16)} is outside RAM (0x${this.size.toString(16)} bytes)`,
        addr,
        length,
      );
    }
  }
}

export interface MedicAhciOptions {
  /** The disk behind each port. */
  readonly disks: readonly BlockBackend[];
  /** Put the generated mediator in front of the controller (passthrough and streaming modes). */
  readonly mediated: boolean;
  /** The VMM's range in v86's RAM (see {@link vmmLayout}); required when mediated. */
  readonly vmmRegion?: MemoryRegion;
  readonly clock?: Clock;
  /** Called once the machine exists (when v86 plugs the device in, before the CPU runs). */
  readonly onMachine?: (machine: Machine) => void;
}

/** medic's AHCI controller (and mediator) as v86's PCI function 00:05.0. */
export class MedicAhci implements PciMmioDevice {
  readonly pciId = AHCI_PCI_ID;
  readonly vendorId = 0x8086;
  readonly deviceId = 0x2922;
  readonly classCode = 0x010601;
  readonly revisionId = 0x02;
  readonly barIndex = 5;
  readonly barBase = AHCI_BAR_BASE;
  readonly barSize = AHCI_BAR_SIZE;
  #machine: Machine | undefined;
  #memory: V86PhysicalMemory | undefined;

  constructor(readonly options: MedicAhciOptions) {
    if (options.mediated && !options.vmmRegion) throw new Error("a mediated controller needs a VMM range");
  }

  /** The medic machine (VMX host, controller, mediator); exists once v86 has attached the device. */
  get machine(): Machine {
    if (!this.#machine) throw new Error("the AHCI device is not plugged into a machine yet");
    return this.#machine;
  }

  get memory(): V86PhysicalMemory {
    if (!this.#memory) throw new Error("the AHCI device is not plugged into a machine yet");
    return this.#memory;
  }

  attach(platform: PciPlatform): void {
    if (this.#machine) throw new Error("the AHCI device is already plugged in");
    const vmmRegion = this.options.vmmRegion;
    const memory = new V86PhysicalMemory(platform, vmmRegion);
    const guestRamBytes = memory.regions
      .filter((r) => r.type === "ram")
      .reduce((sum, r) => sum + r.length, 0);
    const machine = new Machine({
      memory: { physical: memory, vmmRegion, guestRamBytes },
      abar: this.barBase,
      disks: this.options.disks,
      mediated: this.options.mediated,
      clock: this.options.clock ?? new RealClock(),
    });
    machine.host.onGuestIrq((level) => platform.setIrq(level));
    this.#memory = memory;
    this.#machine = machine;
    this.options.onMachine?.(machine);
  }

  mmioRead(offset: number, size: 1 | 2 | 4): number {
    // The BAR is a power of two larger than the register window: the rest reads as zero (reserved).
    if (offset + size > DEVICE.barSize) return 0;
    return this.machine.mmioRead(this.barBase + offset, size);
  }

  mmioWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    if (offset + size > DEVICE.barSize) return;
    this.machine.mmioWrite(this.barBase + offset, size, value);
  }
}

function nextPowerOfTwo(n: number): number {
  let p = 16;
  while (p < n) p *= 2;
  return p;
}

function validRange(addr: number, length: number): boolean {
  return Number.isSafeInteger(addr) && Number.isSafeInteger(length) && addr >= 0 && length >= 0;
}
