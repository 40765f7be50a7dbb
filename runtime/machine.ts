import { AhciMediator, DEVICE, type MediatorPolicy } from "../generated/ahci/index.ts";
import type { BlockBackend } from "./block/types.ts";
import { AhciController } from "./devices/ahci/controller.ts";
import type { Clock } from "./vmx/clock.ts";
import { RealClock } from "./vmx/clock.ts";
import { HANDLED, type MmioRegion, VmxHost } from "./vmx/host.ts";
import { GuestMemory, type MemoryRegion, type PhysicalMemory } from "./vmx/memory.ts";

export const DEFAULT_ABAR = 0xfebf0000;
/** The VMM's private RAM above the guest's: the mediator's command lists, tables and buffers. */
export const DEFAULT_VMM_BYTES = 40 * 1024 * 1024;

export interface MachineOptions {
  readonly ramMiB?: number;
  readonly abar?: number;
  /** The disk behind each port of the controller (the machine's local disks). */
  readonly disks: readonly BlockBackend[];
  readonly clock?: Clock;
  /** Device latency per command, in the clock's milliseconds. */
  readonly latencyMs?: number;
  /** Put the generated mediator in front of the controller (false: bare mode). */
  readonly mediated?: boolean;
  readonly vmmBytes?: number;
  /**
   * VMM memory beyond vmmBytes kept for DMA buffers of the VMM's own (default 0), e.g. the buffers
   * a streaming deployment fetches the image into: the mediator writes them to the disk in place.
   * Only for the machine's own memory (not an emulator's).
   */
  readonly dmaBytes?: number;
  /**
   * Physical memory owned by someone else (an x86 emulator's RAM), instead of a GuestMemory of
   * ramMiB + vmmBytes. Its "reserved" region `vmmRegion` is the VMM's, hidden from the guest.
   */
  readonly memory?: {
    readonly physical: PhysicalMemory;
    readonly vmmRegion: MemoryRegion | undefined;
    readonly guestRamBytes: number;
  };
}

/**
 * One emulated machine: guest RAM (plus the VMM's hidden RAM), the VMX host, the AHCI controller
 * at ABAR, and, when mediated, the generated mediator trapping the register window.
 */
export class Machine {
  readonly memory: PhysicalMemory;
  readonly host: VmxHost;
  readonly controller: AhciController;
  readonly region: MmioRegion;
  readonly mediator: AhciMediator | null;
  readonly clock: Clock;
  readonly abar: number;
  readonly guestRamBytes: number;
  /** The VMM's DMA memory (dmaBytes of it), a live view; null when there is none. */
  readonly dmaArena: Uint8Array | null = null;

  constructor(options: MachineOptions) {
    this.clock = options.clock ?? new RealClock();
    this.abar = options.abar ?? DEFAULT_ABAR;
    let vmmRegion: MemoryRegion | undefined;
    let dmaMemory: { base: number; size: number } | undefined;
    if (options.memory) {
      this.memory = options.memory.physical;
      this.guestRamBytes = options.memory.guestRamBytes;
      vmmRegion = options.memory.vmmRegion;
    } else {
      this.guestRamBytes = (options.ramMiB ?? 64) * 1024 * 1024;
      const vmmBytes = options.mediated ? (options.vmmBytes ?? DEFAULT_VMM_BYTES) : 0;
      const dmaBytes = options.mediated ? (options.dmaBytes ?? 0) : 0;
      const memory = new GuestMemory({
        ramBytes: this.guestRamBytes + vmmBytes + dmaBytes,
        vmmBytes: vmmBytes + dmaBytes,
      });
      this.memory = memory;
      // The mediator's private part first, then the DMA memory above it.
      const reserved = memory.vmmRegion;
      vmmRegion = reserved && { ...reserved, length: vmmBytes };
      if (reserved && dmaBytes > 0) {
        dmaMemory = { base: reserved.base + vmmBytes, size: dmaBytes };
        this.dmaArena = memory.liveView(dmaMemory.base, dmaBytes);
      }
    }
    this.host = new VmxHost({ memory: this.memory, clock: this.clock });
    this.controller = new AhciController({
      disks: options.disks,
      memory: this.memory,
      clock: this.clock,
      latencyMs: options.latencyMs ?? 0,
      onInterrupt: (level) => this.host.deviceIrq.set(level),
      // The VMM watches the device's status: the mediator's own commands need not poll.
      onStatus: () => this.mediator?.deviceStatus(),
    });
    const controller = this.controller;
    const device = {
      read: (offset: number, size: 1 | 2 | 4) => controller.read(offset, size),
      write: (offset: number, size: 1 | 2 | 4, value: number) => controller.write(offset, size, value),
    };
    if (!options.mediated) {
      this.mediator = null;
      this.region = this.host.addMmio({
        name: "abar",
        base: this.abar,
        size: DEVICE.barSize,
        device,
        trapped: false,
      });
      return;
    }
    const vmm = vmmRegion;
    if (!vmm) throw new Error("a mediated machine needs memory reserved for the VMM");
    const mediator = new AhciMediator({
      memory: this.memory,
      isGuestRange: (address, length) => this.memory.isGuestRange(address, length),
      privateMemory: { base: vmm.base, size: vmm.length },
      ...(dmaMemory && { dmaMemory }),
      deviceRead: (offset) => controller.read(offset, 4),
      deviceWrite: (offset, value) => controller.write(offset, 4, value),
      setGuestInterrupt: (level) => {
        if (this.host.on) this.host.setGuestIrq(level);
      },
      sleep: (ms) => this.clock.sleep(ms),
    });
    this.mediator = mediator;
    this.region = this.host.addMmio({
      name: "abar",
      base: this.abar,
      size: DEVICE.barSize,
      device,
      trapped: true,
      handler: (exit) => {
        const q = exit.qualification;
        if (q.write) {
          mediator.write(q.offset, q.size, q.value);
          return HANDLED;
        }
        return mediator.read(q.offset, q.size);
      },
    });
    this.host.setIrqFilter(() => {
      mediator.deviceInterrupt(controller.interruptLevel);
      return this.host.guestIrqPending;
    });
  }

  setPolicy(policy: MediatorPolicy): void {
    if (!this.mediator) throw new Error("a bare machine has no mediator");
    this.mediator.setPolicy(policy);
  }

  /**
   * De-virtualizes at a safe moment: when the mediator agrees nothing the guest has seen differs
   * from the device, drop the traps and turn the VMM off. Returns false when not yet safe.
   */
  devirtualize(): boolean {
    if (!this.mediator || !this.host.on) return false;
    if (!this.mediator.devirtualize()) return false;
    this.host.setIrqFilter(undefined);
    this.host.dropTraps(this.region);
    this.host.turnOff();
    return true;
  }

  /** A guest load from the register window or anywhere MMIO. */
  mmioRead(addr: number, size: 1 | 2 | 4): number {
    return this.host.mmioRead(addr, size) as number;
  }

  mmioWrite(addr: number, size: 1 | 2 | 4, value: number): void {
    this.host.mmioWrite(addr, size, value);
  }

  get irqPending(): boolean {
    return this.host.guestIrqPending;
  }
}
