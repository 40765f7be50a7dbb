import { PORT_SACT, portOffset } from "../../generated/ahci/index.ts";
import { fillLbaPattern, MemoryBackend } from "../../runtime/block/index.ts";
import type { BlockBackend } from "../../runtime/block/types.ts";
import {
  AhciGuestDriver,
  type AhciGuestDriverOptions,
  type GuestPlatform,
} from "../../runtime/guest/driver.ts";
import { Machine, type MachineOptions } from "../../runtime/machine.ts";

export const MODES = [
  { name: "bare", mediated: false },
  { name: "mediated", mediated: true },
] as const;

/** A MemoryBackend holding the lba pattern (writable, so round trips work). */
export function patternDisk(sectors: number): MemoryBackend {
  const disk = new MemoryBackend(sectors);
  fillLbaPattern(disk.bytes, 0);
  return disk;
}

/**
 * Wraps a disk and samples, at every read or write the controller makes, how many NCQ tags the
 * controller holds in PxSACT, and how many backend calls overlap.
 */
export class ProbeDisk implements BlockBackend {
  machine: Machine | undefined;
  maxSact = 0;
  concurrent = 0;
  maxConcurrent = 0;
  calls = 0;

  constructor(
    readonly inner: BlockBackend,
    readonly delay?: (ms: number) => Promise<void>,
    readonly delayMs = 0,
  ) {}

  get sectors(): number {
    return this.inner.sectors;
  }

  get description(): string {
    return `probe over ${this.inner.description}`;
  }

  async #around<T>(work: () => Promise<T>): Promise<T> {
    this.calls++;
    const sact = this.machine?.controller.registers.get(portOffset(0, PORT_SACT)) ?? 0;
    let bits = 0;
    for (let v = sact >>> 0; v !== 0; v &= v - 1) bits++;
    this.maxSact = Math.max(this.maxSact, bits);
    this.concurrent++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    try {
      if (this.delay !== undefined) await this.delay(this.delayMs);
      return await work();
    } finally {
      this.concurrent--;
    }
  }

  read(lba: number, count: number): Promise<Uint8Array> {
    return this.#around(() => this.inner.read(lba, count));
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    return this.#around(() => this.inner.write(lba, data));
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export async function boot(
  machineOptions: MachineOptions,
  driverOptions: AhciGuestDriverOptions = {},
): Promise<{ machine: Machine; driver: AhciGuestDriver }> {
  const machine = new Machine(machineOptions);
  for (const disk of machineOptions.disks) if (disk instanceof ProbeDisk) disk.machine = machine;
  const driver = await AhciGuestDriver.open(machine, driverOptions);
  return { machine, driver };
}

/**
 * The machine as the guest sees it, with every register access logged: what a guest could
 * observe (offsets and the values its loads return, its stores and interrupt deliveries).
 */
export function recordingPlatform(machine: Machine): GuestPlatform & { readonly log: string[] } {
  const log: string[] = [];
  const abar = machine.abar;
  return {
    log,
    memory: machine.memory,
    abar,
    guestRamBytes: machine.guestRamBytes,
    clock: machine.clock,
    mmioRead(addr, size) {
      const value = machine.mmioRead(addr, size);
      log.push(`R ${(addr - abar).toString(16)} ${value.toString(16)}`);
      return value;
    },
    mmioWrite(addr, size, value) {
      log.push(`W ${(addr - abar).toString(16)} ${value.toString(16)}`);
      machine.mmioWrite(addr, size, value);
    },
    get irqPending() {
      return machine.irqPending;
    },
    host: {
      onGuestIrq(listener) {
        return machine.host.onGuestIrq((level) => {
          log.push(`IRQ ${level ? 1 : 0}`);
          listener(level);
        });
      },
    },
  };
}
