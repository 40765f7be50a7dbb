/**
 * An unmodified Linux guest (runtime/guest/linux) on the v86 PC, its root disk behind medic's AHCI
 * controller: in bare mode the guest drives the controller directly, in passthrough mode every access
 * goes through the generated mediator, and in streaming mode a deployment engine drives the mediator
 * (the caller installs it on `machine.mediator` before `run`).
 *
 * What the guest wrote is known two ways, and reported separately so a verifier claims only what it
 * can prove:
 *   - `mediatedWrites`: sectors of every guest write the mediator saw while the VMM was on, with the
 *     content the guest's buffers held (read through the policy hook, the VMM's own view);
 *   - `directWrites`: the sectors the guest wrote with no VMM in the path (bare mode, or after
 *     de-virtualization). Their content is unknown to medic by design: this set comes from a log kept by
 *     the local disk (the harness's instrumented "hardware"), not from the VMM.
 */
import type { BlockBackend } from "../../block/types.ts";
import { SECTOR_SIZE } from "../../block/types.ts";
import type { Machine } from "../../machine.ts";
import { type Clock, RealClock } from "../../vmx/clock.ts";
import {
  type LoadedV86Machine,
  linuxCmdline,
  loadV86Machine,
  type PowerOffEvent,
  type SerialLine,
} from "./machine.ts";
import { MedicAhci, vmmLayout } from "./medic-ahci.ts";
import { type BootPhases, bootPhases } from "./phases.ts";

export type GuestMode = "bare" | "passthrough" | "streaming";
export const GUEST_MODES: readonly GuestMode[] = ["bare", "passthrough", "streaming"];

/** Console lines that mean the disk path misbehaved: libata errors, timeouts, link resets, I/O errors. */
export const ATA_TROUBLE =
  /ata\d+(\.\d+)?: .*(failed|timeout)|hard resetting link|SError|exception Emask|I\/O error|EXT4-fs error|Buffer I\/O error/i;

export interface LinuxGuestOptions {
  readonly vmlinuz: string;
  readonly initrd: string;
  /** The local disk (port 0). */
  readonly disk: BlockBackend;
  readonly mode: GuestMode;
  readonly clock?: Clock;
  /** Guest RAM (v86), MiB. Default 256 (v86 puts the initrd at 64 MiB). */
  readonly memoryMiB?: number;
  /** The VMM's private RAM, MiB, hidden from Linux with memmap= (default: medic-ahci's). */
  readonly vmmMiB?: number;
  /** Seconds the guest waits after MEDIC-GUEST-READY for the host's go (default 3600). */
  readonly waitSeconds?: number;
  /** Each console line, as it arrives. */
  readonly onSerial?: (line: SerialLine) => void;
  /** More kernel command-line arguments. */
  readonly cmdlineExtra?: readonly string[];
}

export interface LinuxRunOptions {
  /**
   * Resolves when the guest may run its last phase (the go after MEDIC-GUEST-WAIT); a streaming
   * deployment passes "de-virtualized". Default: at once.
   */
  readonly release?: () => Promise<void>;
  /**
   * Give up (stop the emulator) after the guest has run this many ms of wall time, not counting its
   * wait for `release`. Default 600 000.
   */
  readonly timeoutMs?: number;
  /** Called when the guest prints MEDIC-GUEST-READY. */
  readonly onReady?: (line: SerialLine) => void;
}

export interface LinuxRunResult {
  readonly end: PowerOffEvent;
  readonly lines: readonly SerialLine[];
  /** Wall-clock milestones since the CPU started. */
  readonly phases: BootPhases;
  /** MEDIC-GUEST-READY, in ms since the CPU started; null if never printed. */
  readonly readyMs: number | null;
  /** Everything that went wrong: MEDIC-*-ERROR lines, ATA trouble on the console, a missing marker. */
  readonly errors: readonly string[];
  /** VM exits when the go was sent and at the end (equal when nothing exited after de-virtualization). */
  readonly exitsAtRelease: number | null;
  readonly exitsAtEnd: number;
  /** Whether the VMM was off when the go was sent. */
  readonly vmmOffAtRelease: boolean | null;
}

export interface GuestIo {
  /** Guest commands the mediator saw (while the VMM was on). */
  mediatedReads: number;
  mediatedWrites: number;
  /**
   * Guest reads the policy did not simply pass to the local disk (streaming: completed from the image,
   * or held until the image's blocks landed), as sector ranges [lba, lba + sectors).
   */
  streamedReads: { lba: number; sectors: number; action: "complete" | "defer" }[];
  /** Guest reads and writes that reached the disk with no VMM in the path (sector ranges). */
  directReads: number;
  directWrites: number;
}

/** A guest wired to medic's controller, loaded but not yet running. */
export class LinuxGuest {
  /** Sectors the guest wrote while the VMM was on, with the data (last completed write wins). */
  readonly mediatedWrites = new Map<number, Uint8Array>();
  /** Sectors the guest wrote without the VMM (bare mode, or after de-virtualization); content unknown. */
  readonly directWrites = new Set<number>();
  readonly io: GuestIo = {
    mediatedReads: 0,
    mediatedWrites: 0,
    streamedReads: [],
    directReads: 0,
    directWrites: 0,
  };

  private constructor(
    readonly options: LinuxGuestOptions,
    readonly machine: Machine,
    readonly device: MedicAhci,
    readonly v86: LoadedV86Machine,
    readonly cmdline: string,
  ) {}

  /** Builds the PC (v86), plugs in medic's controller over `disk`, and leaves the CPU stopped. */
  static async load(options: LinuxGuestOptions): Promise<LinuxGuest> {
    const memoryMiB = options.memoryMiB ?? 256;
    const layout = vmmLayout(
      memoryMiB * 1024 * 1024,
      options.vmmMiB === undefined ? undefined : options.vmmMiB * 1024 * 1024,
    );
    let guest: LinuxGuest | undefined;
    // The local disk logs what reaches it with no VMM in the path (see the module comment).
    let direct: () => boolean = () => false;
    const disk = new LoggingDisk(
      options.disk,
      () => direct(),
      (lba, sectors, write) => {
        if (!guest) return;
        if (write) {
          guest.io.directWrites++;
          for (let s = lba; s < lba + sectors; s++) {
            guest.directWrites.add(s);
            guest.mediatedWrites.delete(s);
          }
        } else {
          guest.io.directReads++;
        }
      },
    );
    const device = new MedicAhci({
      disks: [disk],
      mediated: options.mode !== "bare",
      vmmRegion: layout.region,
      clock: options.clock ?? new RealClock(),
    });
    const cmdline = linuxCmdline({
      extra: [layout.cmdline, `medic.wait=${options.waitSeconds ?? 3600}`, ...(options.cmdlineExtra ?? [])],
    });
    const v86 = await loadV86Machine({
      vmlinuz: options.vmlinuz,
      initrd: options.initrd,
      cmdline,
      memoryMiB,
      pciDevice: device,
      onSerial: options.onSerial
        ? (_text, _t) => options.onSerial!(v86.lines[v86.lines.length - 1]!)
        : undefined,
    });
    const machine = device.machine;
    guest = new LinuxGuest(options, machine, device, v86, cmdline);
    if (options.mode === "bare") direct = () => true;
    else direct = () => !machine.host.on;
    if (machine.mediator) guest.recordThroughMediator();
    return guest;
  }

  /**
   * Sees every guest command through the mediator's policy hook, whoever sets the policy (the
   * deployment engine in streaming mode; pass-through otherwise): writes are captured with their data
   * when interpreted and kept once the device completed them.
   */
  private recordThroughMediator(): void {
    const mediator = this.machine.mediator!;
    const setPolicy = mediator.setPolicy.bind(mediator);
    type Policy = Parameters<typeof setPolicy>[0];
    type Request = Parameters<Policy["interpret"]>[0];
    const pending = new WeakMap<Request, Uint8Array>();
    const wrap = (inner: Policy): Policy => ({
      interpret: (request) => {
        if (request.op === "read") this.io.mediatedReads++;
        if (request.op === "write") {
          this.io.mediatedWrites++;
          pending.set(request, request.readData());
        }
        const decision = inner.interpret(request);
        if (request.op === "read" && decision.action !== "pass") {
          this.io.streamedReads.push({ lba: request.lba, sectors: request.sectors, action: decision.action });
        }
        return decision;
      },
      completed: (request, ok) => {
        const data = pending.get(request);
        if (data && ok) {
          pending.delete(request);
          for (let i = 0; i < request.sectors; i++) {
            this.mediatedWrites.set(request.lba + i, data.slice(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE));
          }
        }
        inner.completed?.(request, ok);
      },
      idle: inner.idle ? (port) => inner.idle!(port) : undefined,
    });
    mediator.setPolicy = (policy: Policy) => setPolicy(wrap(policy));
    mediator.setPolicy({ interpret: () => ({ action: "pass" }) });
  }

  /**
   * Starts the CPU and runs the guest to its power-off: SeaBIOS, the kernel, the initramfs, the root
   * fs's checks and write (MEDIC-GUEST-READY), then, after `release`, its last write and read-only
   * remount. Never rejects for a guest failure: those are in `errors`.
   */
  async run(options: LinuxRunOptions = {}): Promise<LinuxRunResult> {
    const v86 = this.v86;
    const host = this.machine.host;
    const errors: string[] = [];
    let exitsAtRelease: number | null = null;
    let vmmOffAtRelease: boolean | null = null;
    /** Set once the machine has ended. */
    let ended = false;
    // The time limit counts the guest's running time only: it stops while the guest waits for the go.
    const limitMs = options.timeoutMs ?? 600_000;
    let budgetMs = limitMs;
    let armedAt = 0;
    let timeout: NodeJS.Timeout | undefined;
    const arm = (): void => {
      armedAt = performance.now();
      timeout = setTimeout(() => {
        errors.push(`the guest did not power off within ${limitMs / 1000} s of running time`);
        void v86.stop();
      }, budgetMs);
    };
    const disarm = (): void => {
      if (timeout === undefined) return;
      clearTimeout(timeout);
      timeout = undefined;
      budgetMs = Math.max(0, budgetMs - (performance.now() - armedAt));
    };
    const ready = v86.waitForLine(/^MEDIC-GUEST-READY /, 24 * 3600_000).then(
      (line) => {
        options.onReady?.(line);
        return line;
      },
      () => null,
    );
    const released = v86.waitForLine(/^MEDIC-GUEST-WAIT /, 24 * 3600_000).then(
      async () => {
        disarm();
        try {
          await (options.release?.() ?? Promise.resolve());
        } catch (error) {
          errors.push(`host: ${error instanceof Error ? error.message : String(error)}`);
        }
        if (ended) return; // the guest is gone: nothing to release
        exitsAtRelease = host.stats.exits;
        vmmOffAtRelease = !host.on;
        arm();
        v86.sendSerial("go\n");
      },
      () => {},
    );
    let end: PowerOffEvent;
    try {
      arm();
      await v86.run();
      end = await v86.done;
    } finally {
      ended = true;
      disarm();
    }
    await v86.stop();
    const readyLine = await ready;
    // A release still pending (the guest ended before its go) is not waited for.
    await Promise.race([released, new Promise((r) => setImmediate(r))]);
    // Commands the guest left behind (none after a clean power-off) finish before anyone reads the disk.
    await this.machine.controller.idle();
    const lines = v86.lines;
    for (const l of lines) {
      if (/^MEDIC-[A-Z]+-ERROR/.test(l.text)) errors.push(l.text);
      else if (ATA_TROUBLE.test(l.text)) errors.push(`console: ${l.text}`);
    }
    if (end.reason === "device-error") {
      errors.push(`device error: ${end.error instanceof Error ? end.error.message : String(end.error)}`);
    } else if (end.reason !== "poweroff" && end.reason !== "halt") {
      errors.push(`the guest ended with ${end.reason}${end.line ? `: ${end.line}` : ""}`);
    }
    const done = lines.find((l) => /^MEDIC-GUEST-DONE /.test(l.text));
    if (!readyLine) errors.push("the guest never printed MEDIC-GUEST-READY");
    else if (!done) errors.push("the guest never printed MEDIC-GUEST-DONE");
    return {
      end,
      lines,
      phases: bootPhases(lines),
      readyMs: readyLine?.tMs ?? null,
      errors,
      exitsAtRelease,
      exitsAtEnd: host.stats.exits,
      vmmOffAtRelease,
    };
  }

  /** Stops the emulator (idempotent). */
  async stop(): Promise<void> {
    await this.v86.stop();
  }
}

/** A disk that reports each read and write while `active()` says so. */
class LoggingDisk implements BlockBackend {
  readonly sectors: number;
  readonly description: string;

  constructor(
    private readonly inner: BlockBackend,
    private readonly active: () => boolean,
    private readonly log: (lba: number, sectors: number, write: boolean) => void,
  ) {
    this.sectors = inner.sectors;
    this.description = inner.description;
  }

  read(lba: number, count: number): Promise<Uint8Array> {
    if (this.active()) this.log(lba, count, false);
    return this.inner.read(lba, count);
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    if (this.active()) this.log(lba, data.length / SECTOR_SIZE, true);
    return this.inner.write(lba, data);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
