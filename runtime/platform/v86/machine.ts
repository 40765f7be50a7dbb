/**
 * An emulated 32-bit PC (the `v86` x86 emulator, pinned: see README.md) that boots an unmodified Linux
 * kernel with SeaBIOS, with one extra PCI function whose registers, DMA and interrupt line are provided
 * by medic code (a {@link PciMmioDevice}). This is the only module of medic that imports v86.
 *
 * v86 internals used (all reached through `emulator.v86.cpu` after `emulator-loaded`):
 *   cpu.devices.pci.register_device({pci_id, pci_space, pci_bars, name})   PCI config space
 *   cpu.devices.pci.device_spaces[pci_id]                                  live config space (Int32Array)
 *   cpu.devices.pci.isa_bridge_space8[0x60..0x63]                          PIIX3 PIRQ routing (PIRQRC)
 *   cpu.io.mmap_register(base, size, r8, w8, r32, w32)                    MMIO, 128 KiB granularity
 *   cpu.read_blob(addr, len) / cpu.write_blob(bytes, addr)                 DMA (write_blob keeps the JIT coherent)
 *   cpu.device_raise_irq(irq) / cpu.device_lower_irq(irq)                  the PIC line (level, ELCR)
 *   cpu.memory_size[0]                                                     guest RAM size
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { V86 } from "v86";
import type { PciMmioDevice, PciPlatform } from "./types.ts";

export type { PciMmioDevice, PciPlatform } from "./types.ts";

export const SEABIOS_BIOS = "/usr/share/seabios/bios.bin";
export const SEABIOS_VGABIOS = "/usr/share/seabios/vgabios.bin";
/** v86 maps MMIO in blocks of this size (MMAP_BLOCK_BITS = 17). */
export const MMIO_GRANULARITY = 128 * 1024;

type Blob = string | Uint8Array;

export interface V86MachineOptions {
  /** SeaBIOS image; default /usr/share/seabios/bios.bin (Debian's `seabios` package). */
  bios?: Blob;
  /** VGA BIOS image; default /usr/share/seabios/vgabios.bin. */
  vgabios?: Blob;
  /** The bzImage (e.g. Debian's /boot/vmlinuz-*-686). */
  vmlinuz: Blob;
  /** The initramfs; v86 puts it at 64 MiB, so memoryMiB must exceed 64 + its size. */
  initrd?: Blob;
  /** Kernel command line, e.g. from {@link linuxCmdline}. */
  cmdline: string;
  /** Guest RAM in MiB (power of two advised). Default 256. */
  memoryMiB?: number;
  /** The medic-side PCI device. */
  pciDevice?: PciMmioDevice;
  /**
   * A disk image for v86's own IDE controller (primary master, in memory: writes are not saved). For
   * baselines and for checking the guest without a medic device; the guest then needs `ata_piix`.
   */
  ideDisk?: Blob;
  /** Each complete console line (ttyS0), without its line end, with ms since `run()`. */
  onSerial?: (line: string, tMs: number) => void;
  /** The guest powered off, halted, rebooted or panicked, or a device handler threw. */
  onPowerOff?: (event: PowerOffEvent) => void;
  /** Stop the emulator when {@link onPowerOff} fires (default true). */
  stopOnPowerOff?: boolean;
}

export type PowerOffReason = "poweroff" | "halt" | "reboot" | "panic" | "device-error" | "stopped";

export interface PowerOffEvent {
  reason: PowerOffReason;
  /** ms since `run()`. */
  tMs: number;
  /** The console line that revealed it, if any. */
  line?: string;
  /** For "device-error": what the device's handler threw. */
  error?: unknown;
}

export interface SerialLine {
  text: string;
  /** Wall-clock ms since `run()`. */
  tMs: number;
  /**
   * CPU ms this Node process used since `run()` (user + system). The emulator is single-threaded, so on
   * a busy host this tracks the guest's progress better than wall time.
   */
  cpuMs: number;
}

export interface V86MachineStats {
  mmioReads: number;
  mmioWrites: number;
  dmaReads: number;
  dmaReadBytes: number;
  dmaWrites: number;
  dmaWriteBytes: number;
  irqRaises: number;
}

export interface V86Machine {
  /** Console lines so far. */
  readonly lines: readonly SerialLine[];
  /** Everything written to ttyS0 so far (including an unfinished last line). */
  consoleText(): string;
  /** Resolves when the guest powers off / halts / reboots / panics, a device fails, or stop() is called. */
  readonly done: Promise<PowerOffEvent>;
  /** Resolve with the first line (past or future) matching `re`; reject after `timeoutMs` or at `done`. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<SerialLine>;
  /** Type into ttyS0. */
  sendSerial(text: string): void;
  readonly stats: Readonly<V86MachineStats>;
  /** The IRQ the device's INTA# is currently asserted on (after PIRQ routing), or -1 when deasserted. */
  currentIrq(): number;
  /** A copy of the device's live PCI config space (as firmware and OS left it), if there is a device. */
  pciConfig(): Uint8Array | undefined;
  /** Stop and free the emulator. Idempotent. */
  stop(): Promise<void>;
}

/** The kernel command line the platform boots Linux with. */
export function linuxCmdline(
  options: {
    /** Console loglevel (default: the kernel's, 7 on Debian; 4 for `quiet`). */
    loglevel?: number;
    /** Seconds the initramfs waits for /dev/sda1 (default 10). */
    rootwait?: number;
    extra?: readonly string[];
  } = {},
): string {
  const args = [
    "console=ttyS0,115200",
    // Also print from the very start (real-mode setup, decompressor, early kernel) for boot-phase timing.
    "earlyprintk=serial,ttyS0,115200",
    // v86 has no ACPI tables by default and no APIC unless ACPI is on: keep Linux on the PIC and the
    // SeaBIOS $PIR table for PCI interrupt routing.
    "acpi=off",
    "noapic",
    "nolapic",
    // No speculative-execution mitigations (pure overhead under emulation), no KASLR (stable addresses
    // in logs), no waiting for entropy or for the TSC.
    "mitigations=off",
    "nokaslr",
    "random.trust_cpu=on",
    "tsc=reliable",
    "no_timer_check",
    "panic=-1",
    // Boot-time savings measured under v86: the crypto self-tests (and the jitter-entropy DRBG seeding
    // they trigger) cost ~16 s; the ISA PnP probe ~0.6 s.
    "cryptomgr.notests",
    "noisapnp",
    "rdinit=/init",
  ];
  if (options.loglevel !== undefined) args.push(`loglevel=${options.loglevel}`);
  if (options.rootwait !== undefined) args.push(`medic.rootwait=${options.rootwait}`);
  args.push(...(options.extra ?? []));
  return args.join(" ");
}

/** The 256-byte type-0 configuration space of `dev` as v86 expects it (bytes, little endian). */
export function buildPciConfigSpace(dev: PciMmioDevice): Uint8Array {
  if (dev.barIndex < 0 || dev.barIndex > 5) throw new RangeError(`barIndex ${dev.barIndex} not in 0..5`);
  if (dev.barSize < 16 || (dev.barSize & (dev.barSize - 1)) !== 0) {
    throw new RangeError(`barSize ${dev.barSize} must be a power of two >= 16`);
  }
  if ((dev.barBase >>> 0) % dev.barSize !== 0) throw new RangeError("barBase must be aligned to barSize");
  const s = new Uint8Array(256);
  const dv = new DataView(s.buffer);
  dv.setUint16(0x00, dev.vendorId, true);
  dv.setUint16(0x02, dev.deviceId, true);
  dv.setUint16(0x04, 0x0006, true); // command: memory space + bus master
  dv.setUint16(0x06, 0x0000, true); // status: no capability list (so no MSI: INTx only)
  s[0x08] = dev.revisionId ?? 0x02;
  s[0x09] = dev.classCode & 0xff; // prog-if
  s[0x0a] = (dev.classCode >>> 8) & 0xff; // subclass
  s[0x0b] = (dev.classCode >>> 16) & 0xff; // base class
  s[0x0e] = 0x00; // header type 0, single function
  // Memory BAR: bit 0 = 0 (memory), bits 2:1 = 00 (32-bit), bit 3 = 0 (non-prefetchable).
  dv.setUint32(0x10 + 4 * dev.barIndex, dev.barBase >>> 0, true);
  dv.setUint16(0x2c, dev.subsystemVendorId ?? dev.vendorId, true);
  dv.setUint16(0x2e, dev.subsystemId ?? dev.deviceId, true);
  s[0x3c] = 0x00; // interrupt line: assigned by SeaBIOS from the PIIX PIRQ routing
  s[0x3d] = 0x01; // interrupt pin: INTA#
  return s;
}

// Minimal shapes of the v86 internals used here (v86's .d.ts does not describe them).
interface V86Cpu {
  devices: { pci: V86Pci };
  io: {
    mmap_register(
      addr: number,
      size: number,
      read8: (addr: number) => number,
      write8: (addr: number, value: number) => void,
      read32: (addr: number) => number,
      write32: (addr: number, value: number) => void,
    ): void;
  };
  read_blob(addr: number, len: number): Uint8Array;
  write_blob(data: Uint8Array, addr: number): void;
  device_raise_irq(irq: number): void;
  device_lower_irq(irq: number): void;
  memory_size: Uint32Array | Int32Array;
}
interface V86Pci {
  register_device(device: {
    pci_id: number;
    pci_space: number[];
    pci_bars: ({ size: number } | undefined)[];
    name: string;
  }): Int32Array;
  device_spaces: (Int32Array | undefined)[];
  /** The PIIX3 ISA bridge's config space (PIRQRC[A-D] at 0x60-0x63). */
  isa_bridge_space8: Uint8Array;
}
interface V86Emulator {
  v86: { cpu: V86Cpu };
  add_listener(event: string, fn: (arg: never) => void): void;
  run(): Promise<void> | void;
  stop(): Promise<void> | void;
  destroy(): Promise<void> | void;
  serial0_send(text: string): void;
}

function toArrayBuffer(blob: Blob): ArrayBuffer {
  const bytes = typeof blob === "string" ? new Uint8Array(readFileSync(blob)) : blob;
  // v86 views the kernel as a Uint32Array: pad to a multiple of 4.
  const ab = new ArrayBuffer((bytes.length + 3) & ~3);
  new Uint8Array(ab).set(bytes);
  return ab;
}

function v86WasmPath(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve("v86")), "v86.wasm");
}

const POWER_PATTERNS: [RegExp, PowerOffReason][] = [
  [/reboot: Power down/, "poweroff"],
  [/reboot: System halted/, "halt"],
  [/reboot: Restarting system/, "reboot"],
  [/Kernel panic - not syncing/, "panic"],
];

/** A machine that is loaded and has its device plugged in, but does not run yet. */
export interface LoadedV86Machine extends V86Machine {
  /** Start the CPU (once); times reported by the machine count from here. */
  run(): Promise<void>;
}

/** Create the PC, plug in `pciDevice`, and start it. */
export async function startV86Machine(options: V86MachineOptions): Promise<V86Machine> {
  const machine = await loadV86Machine(options);
  await machine.run();
  return machine;
}

/**
 * Create the PC and plug in `pciDevice` (its `attach` runs here), without starting the CPU: the caller
 * can finish wiring the device (e.g. install a deployment engine) before the firmware first touches it.
 */
export async function loadV86Machine(options: V86MachineOptions): Promise<LoadedV86Machine> {
  const memoryBytes = (options.memoryMiB ?? 256) * 1024 * 1024;
  const emulator = new V86({
    wasm_path: v86WasmPath(),
    memory_size: memoryBytes,
    vga_memory_size: 2 * 1024 * 1024,
    bios: { buffer: toArrayBuffer(options.bios ?? SEABIOS_BIOS) },
    vga_bios: { buffer: toArrayBuffer(options.vgabios ?? SEABIOS_VGABIOS) },
    bzimage: { buffer: toArrayBuffer(options.vmlinuz) },
    ...(options.initrd ? { initrd: { buffer: toArrayBuffer(options.initrd) } } : {}),
    ...(options.ideDisk ? { hda: { buffer: toArrayBuffer(options.ideDisk) } } : {}),
    cmdline: options.cmdline,
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
    acpi: false,
  }) as unknown as V86Emulator;

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("v86 did not load within 60 s")), 60_000);
    emulator.add_listener("emulator-loaded", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  const cpu = emulator.v86.cpu;
  const ramBytes = cpu.memory_size[0]! >>> 0;

  const stats: V86MachineStats = {
    mmioReads: 0,
    mmioWrites: 0,
    dmaReads: 0,
    dmaReadBytes: 0,
    dmaWrites: 0,
    dmaWriteBytes: 0,
    irqRaises: 0,
  };
  const lines: SerialLine[] = [];
  const lineWaiters: { re: RegExp; resolve: (l: SerialLine) => void }[] = [];
  let consoleText = "";
  let partial = "";
  let t0 = 0;
  const now = (): number => (t0 === 0 ? 0 : performance.now() - t0);
  let cpu0: NodeJS.CpuUsage | undefined;
  const cpuNow = (): number => {
    if (!cpu0) return 0;
    const d = process.cpuUsage(cpu0);
    return (d.user + d.system) / 1000;
  };

  let finished = false;
  let stopped = false;
  let resolveDone!: (e: PowerOffEvent) => void;
  const done = new Promise<PowerOffEvent>((r) => {
    resolveDone = r;
  });

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await emulator.stop();
    await emulator.destroy();
    finish({ reason: "stopped", tMs: now() });
  };

  const finish = (event: PowerOffEvent): void => {
    if (finished) return;
    finished = true;
    options.onPowerOff?.(event);
    resolveDone(event);
    if (options.stopOnPowerOff ?? true) {
      // Not from inside an emulator callback: let the current instruction finish first.
      setImmediate(() => void stop());
    }
  };

  let panicTimer: NodeJS.Timeout | undefined;
  const onLine = (text: string): void => {
    const line = { text, tMs: now(), cpuMs: cpuNow() };
    lines.push(line);
    options.onSerial?.(text, line.tMs);
    for (let i = lineWaiters.length - 1; i >= 0; i--) {
      const w = lineWaiters[i]!;
      if (w.re.test(text)) {
        lineWaiters.splice(i, 1);
        w.resolve(line);
      }
    }
    for (const [re, reason] of POWER_PATTERNS) {
      if (!re.test(text)) continue;
      if (reason === "panic") {
        // Let the rest of the panic report reach the console first.
        panicTimer ??= setTimeout(() => finish({ reason, tMs: now(), line: text }), 500);
      } else {
        finish({ reason, tMs: now(), line: text });
      }
    }
  };

  emulator.add_listener("serial0-output-byte", ((byte: number) => {
    const ch = String.fromCharCode(byte);
    consoleText += ch;
    if (ch === "\n") {
      onLine(partial.replace(/\r$/, ""));
      partial = "";
    } else {
      partial += ch;
    }
  }) as (arg: never) => void);

  // ---- the PCI device ----
  let currentIrq = -1;
  let liveConfig: Uint8Array | undefined;
  if (options.pciDevice) {
    const dev = options.pciDevice;
    const space = buildPciConfigSpace(dev);
    const bars: ({ size: number } | undefined)[] = [];
    bars[dev.barIndex] = { size: dev.barSize };
    for (let i = 0; i < 6; i++) bars[i] ??= undefined;
    cpu.devices.pci.register_device({
      pci_id: dev.pciId,
      pci_space: Array.from(space),
      pci_bars: bars,
      name: `medic-${dev.vendorId.toString(16)}:${dev.deviceId.toString(16)}`,
    });
    const liveSpace = cpu.devices.pci.device_spaces[dev.pciId];
    if (!liveSpace) throw new Error("v86 did not register the PCI device");
    liveConfig = new Uint8Array(liveSpace.buffer, liveSpace.byteOffset, 256);

    const base = dev.barBase >>> 0;
    const winBase = base - (base % MMIO_GRANULARITY);
    const winEnd = Math.ceil((base + dev.barSize) / MMIO_GRANULARITY) * MMIO_GRANULARITY;
    const failed = (error: unknown): void => {
      finish({ reason: "device-error", tMs: now(), error });
    };
    const inBar = (offset: number, size: number): boolean => offset >= 0 && offset + size <= dev.barSize;
    cpu.io.mmap_register(
      winBase,
      winEnd - winBase,
      (addr) => {
        const off = (addr >>> 0) - base;
        if (!inBar(off, 1)) return 0xff;
        stats.mmioReads++;
        try {
          return dev.mmioRead(off, 1) & 0xff;
        } catch (e) {
          failed(e);
          return 0xff;
        }
      },
      (addr, value) => {
        const off = (addr >>> 0) - base;
        if (!inBar(off, 1)) return;
        stats.mmioWrites++;
        try {
          dev.mmioWrite(off, 1, value & 0xff);
        } catch (e) {
          failed(e);
        }
      },
      (addr) => {
        const off = (addr >>> 0) - base;
        if (!inBar(off, 4)) return -1;
        stats.mmioReads++;
        try {
          return dev.mmioRead(off, 4) | 0;
        } catch (e) {
          failed(e);
          return -1;
        }
      },
      (addr, value) => {
        const off = (addr >>> 0) - base;
        if (!inBar(off, 4)) return;
        stats.mmioWrites++;
        try {
          dev.mmioWrite(off, 4, value >>> 0);
        } catch (e) {
          failed(e);
        }
      },
    );

    // INTA# goes through the PIIX3 PIRQ router as on real hardware: link (pin-1 + slot-1) & 3 (the
    // swizzle v86's pci.raise_irq and SeaBIOS use), IRQ = the ISA bridge's PIRQRC register 0x60+link,
    // which SeaBIOS programs (10, 10, 11, 11). The IRQ actually raised is remembered, so lowering is
    // right even if the routing changed meanwhile, and nothing is raised while the link is unrouted
    // (v86 starts with 0 = the timer's IRQ in those registers).
    const pirqLink = (((space[0x3d]! || 1) - 1 + (dev.pciId >> 3) - 1) & 3) >>> 0;
    let level = false;
    const routedIrq = (): number => {
      const r = cpu.devices.pci.isa_bridge_space8[0x60 + pirqLink]!;
      return (r & 0x80) === 0 && r > 0 && r < 16 && r !== 2 ? r : -1;
    };
    const syncIrq = (): void => {
      const target = level ? routedIrq() : -1;
      if (target === currentIrq) return;
      if (currentIrq >= 0) cpu.device_lower_irq(currentIrq);
      currentIrq = target;
      if (currentIrq >= 0) {
        stats.irqRaises++;
        cpu.device_raise_irq(currentIrq);
      }
    };
    const checkDma = (addr: number, len: number): void => {
      if (!Number.isInteger(addr) || !Number.isInteger(len) || addr < 0 || len < 0 || addr + len > ramBytes) {
        throw new RangeError(`DMA outside guest RAM: ${addr.toString(16)}+${len.toString(16)}`);
      }
    };
    const platform: PciPlatform = {
      ramBytes,
      dmaRead(addr, len) {
        checkDma(addr, len);
        stats.dmaReads++;
        stats.dmaReadBytes += len;
        return cpu.read_blob(addr, len).slice();
      },
      dmaWrite(addr, data) {
        checkDma(addr, data.length);
        stats.dmaWrites++;
        stats.dmaWriteBytes += data.length;
        if (data.length > 0) cpu.write_blob(data, addr);
      },
      setIrq(l) {
        level = l;
        syncIrq();
      },
    };
    dev.attach(platform);
  }

  let started = false;
  return {
    async run() {
      if (started || stopped) return;
      started = true;
      t0 = performance.now();
      cpu0 = process.cpuUsage();
      await emulator.run();
    },
    lines,
    consoleText: () => consoleText,
    done,
    stats,
    currentIrq: () => currentIrq,
    pciConfig: () => liveConfig?.slice(),
    waitForLine(re, timeoutMs) {
      const hit = lines.find((l) => re.test(l.text));
      if (hit) return Promise.resolve(hit);
      return new Promise<SerialLine>((resolve, reject) => {
        const waiter = {
          re,
          resolve: (l: SerialLine) => {
            clearTimeout(timer);
            resolve(l);
          },
        };
        const timer = setTimeout(() => {
          const i = lineWaiters.indexOf(waiter);
          if (i >= 0) lineWaiters.splice(i, 1);
          reject(new Error(`no console line matching ${re} within ${timeoutMs} ms`));
        }, timeoutMs);
        lineWaiters.push(waiter);
        void done.then((ev) => {
          // Give a last chance to lines printed just before the end.
          setTimeout(() => {
            const i = lineWaiters.indexOf(waiter);
            if (i < 0) return;
            lineWaiters.splice(i, 1);
            clearTimeout(timer);
            reject(new Error(`machine ended (${ev.reason}) before a console line matched ${re}`));
          }, 50);
        });
      });
    },
    sendSerial(text) {
      emulator.serial0_send(text);
    },
    stop: async () => {
      if (panicTimer) clearTimeout(panicTimer);
      await stop();
    },
  };
}
