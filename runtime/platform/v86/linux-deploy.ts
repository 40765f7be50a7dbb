/**
 * `medic deploy --guest linux`: the real Linux guest (runtime/guest/linux) on the v86 PC, its root disk
 * the deployment's local disk behind medic's AHCI controller.
 *
 *   streaming     the image streams in while the guest boots from the local disk through the generated
 *                 mediator (BMcast): a DeploySession whose machine is the v86 PC. The guest's last phase
 *                 (a second write, sync, read-only remount) starts once the VMM is off.
 *   bare          copy-then-boot: the whole image is copied to the local disk, then the guest boots with
 *                 no VMM (the controller's registers are the guest's own).
 *   passthrough   copy-then-boot, with every register access trapped to the mediator (pass policy).
 *
 * Verification (`verify`): the local disk must equal the image except where the guest wrote. Sectors the
 * guest wrote while the mediator saw it must hold exactly what the guest's buffers held; sectors it wrote
 * with no VMM in the path (bare mode, or after de-virtualization) are not compared, because medic cannot
 * know them by design. Their set comes from the local disk's own write log; what the guest wrote there
 * is checked by the guest itself (it re-reads its files after dropping its caches) and, from the
 * outside, by e2fsck and by reading the guest's files back from the disk (checkGuestDisk).
 */
import { existsSync } from "node:fs";
import { readFile, rm, stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { FileBackend } from "../../block/file.ts";
import { ThrottledSource } from "../../block/throttle.ts";
import { type BlockBackend, type BlockSource, SECTOR_SIZE } from "../../block/types.ts";
import type { EngineEvent } from "../../deploy/engine.ts";
import {
  DeployError,
  type DeployProgress,
  DeploySession,
  type DeploySummary,
  type Workload,
} from "../../deploy/session.ts";
import type { GuestManifest } from "../../guest/linux/build.ts";
import { checkGuestDisk, type GuestDiskCheck } from "../../guest/linux/check.ts";
import { openSource } from "../../sources/open.ts";
import type { SourceEvent } from "../../sources/options.ts";
import { type Clock, RealClock } from "../../vmx/clock.ts";
import { type GuestMode, LinuxGuest, type LinuxRunResult } from "./linux.ts";
import type { SerialLine } from "./machine.ts";

export interface LinuxGuestFiles {
  readonly vmlinuz: string;
  readonly initrd: string;
  /** The build manifest (expected hashes of the guest's files), when known. */
  readonly manifest: GuestManifest | null;
}

/** The kernel and initramfs in `dir` (as `medic guest build --out DIR` leaves them), with its manifest. */
export async function guestFilesIn(dir: string): Promise<LinuxGuestFiles> {
  const vmlinuz = join(dir, "vmlinuz");
  const initrd = join(dir, "initrd.img");
  for (const f of [vmlinuz, initrd]) {
    if (!existsSync(f)) {
      throw new DeployError(`no ${f}: build the guest first (npx medic guest build --out ${dir})`);
    }
  }
  let manifest: GuestManifest | null = null;
  try {
    manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as GuestManifest;
  } catch {
    manifest = null;
  }
  return { vmlinuz, initrd, manifest };
}

/** Where the guest's kernel is: --guest-dir, else beside a local image file, else .cache/guest. */
export function defaultGuestDir(image: string): string {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(image)) {
    const beside = dirname(resolve(image));
    if (existsSync(join(beside, "vmlinuz"))) return beside;
  }
  return ".cache/guest";
}

export interface LinuxDeployOptions {
  readonly image: string;
  readonly disk: string;
  readonly mode: GuestMode;
  readonly guest: LinuxGuestFiles;
  readonly clock?: Clock;
  readonly linkBytesPerSecond?: number;
  readonly latencyMs?: number;
  readonly blockBytes?: number;
  readonly backgroundRate?: number;
  readonly fullRateWhenIdleMs?: number;
  readonly fetchDepth?: number;
  readonly flushEveryBytes?: number;
  readonly retries?: number;
  readonly giveUpAfterMs?: number;
  readonly verifyBlock?: (block: number, data: Uint8Array) => boolean;
  /** Compare the disk with the image and check the guest's files afterwards. */
  readonly verify?: boolean;
  readonly onProgress?: (progress: DeployProgress) => void;
  readonly onEvent?: (event: EngineEvent | SourceEvent) => void;
  /** The guest's serial console, line by line. */
  readonly onConsole?: (line: SerialLine) => void;
  /** Stop the guest after this many ms (default 600 000). */
  readonly timeoutMs?: number;
}

export interface LinuxDeploySummary extends DeploySummary {
  guest: "linux";
  mode: GuestMode;
  kernel_cmdline: string;
  /** Copy-then-boot modes: the image copy over the link (ms); null when streaming. */
  copy_ms: number | null;
  /** From the CPU's start to MEDIC-GUEST-READY (ms, wall clock). */
  boot_ms: number | null;
  /** Console milestones since the CPU started (s). */
  boot_phases: Record<string, number>;
  /** From the CPU's start to the guest's power-off (ms). */
  guest_end_ms: number;
  guest_end: string;
  exits_at_release: number | null;
  exits_at_end: number;
  /** Verification detail (null without --verify). */
  verify_detail: VerifyDetail | null;
  /** The root fs and the guest's written files on the finished disk (null without --verify). */
  guest_disk: GuestDiskCheck | null;
}

export interface VerifyDetail {
  /** Sectors compared with the image. */
  image_sectors: number;
  /** Sectors compared with what the guest wrote through the mediator. */
  guest_sectors_known: number;
  /** Sectors the guest wrote with no VMM in the path: not compared. */
  guest_sectors_unknown: number;
  bad_sectors: number[];
}

export interface LinuxDeployResult {
  readonly summary: LinuxDeploySummary;
  readonly run: LinuxRunResult;
  readonly guest: LinuxGuest;
}

/** Runs one deployment of the Linux guest in `mode` (see the module comment). */
export async function deployLinux(o: LinuxDeployOptions): Promise<LinuxDeployResult> {
  return o.mode === "streaming" ? streaming(o) : copyThenBoot(o);
}

async function streaming(o: LinuxDeployOptions): Promise<LinuxDeployResult> {
  const clock = o.clock ?? new RealClock();
  let guest: LinuxGuest | undefined;
  let run: LinuxRunResult | undefined;
  let readyResolve!: (at: number) => void;
  const ready = new Promise<number>((r) => {
    readyResolve = r;
  });
  const workload: Workload = {
    name: "linux",
    ready,
    async run(env) {
      const g = guest!;
      run = await g.run({
        release: () => env.finish(0),
        onReady: () => readyResolve(clock.now()),
        timeoutMs: o.timeoutMs,
      });
      return {
        reads: g.io.mediatedReads + g.io.directReads,
        writes: g.io.mediatedWrites + g.io.directWrites,
        written: g.mediatedWrites,
        errors: run.errors,
      };
    },
  };
  let session: DeploySession;
  try {
    session = await DeploySession.open({
      image: o.image,
      disk: o.disk,
      clock,
      workload,
      linkBytesPerSecond: o.linkBytesPerSecond,
      latencyMs: o.latencyMs,
      blockBytes: o.blockBytes,
      backgroundRate: o.backgroundRate,
      fullRateWhenIdleMs: o.fullRateWhenIdleMs,
      fetchDepth: o.fetchDepth,
      flushEveryBytes: o.flushEveryBytes,
      retries: o.retries,
      giveUpAfterMs: o.giveUpAfterMs,
      verifyBlock: o.verifyBlock,
      onProgress: o.onProgress,
      onEvent: o.onEvent,
      machine: async (disk) => {
        guest = await LinuxGuest.load({
          vmlinuz: o.guest.vmlinuz,
          initrd: o.guest.initrd,
          disk,
          mode: "streaming",
          clock,
          onSerial: o.onConsole,
        });
        return guest.machine;
      },
    });
  } catch (error) {
    await guest?.stop();
    throw error;
  }
  const g = guest!;
  let summary: DeploySummary;
  let detail: VerifyDetail | null = null;
  try {
    try {
      summary = await session.run();
    } finally {
      await g.stop();
    }
    if (o.verify) detail = await verifyDisk(session.source, session.disk, g);
  } finally {
    await session.close();
  }
  const r = run!;
  return finish(o, g, r, summary, null, detail);
}

async function copyThenBoot(o: LinuxDeployOptions): Promise<LinuxDeployResult> {
  const clock = o.clock ?? new RealClock();
  let source: BlockSource;
  try {
    source = await openSource(o.image, { clock, onEvent: o.onEvent });
  } catch (error) {
    throw new DeployError(
      `cannot open the image ${o.image}: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  const image: BlockSource =
    o.linkBytesPerSecond || o.latencyMs
      ? new ThrottledSource(source, {
          clock,
          bandwidth: o.linkBytesPerSecond ?? Number.POSITIVE_INFINITY,
          latency: o.latencyMs ?? 0,
        })
      : source;
  let disk: FileBackend | undefined;
  let guest: LinuxGuest | undefined;
  try {
    disk = await openDisk(o.disk, source.sectors);
    // The disk is rewritten whole: a streaming deployment's bitmap for it no longer applies.
    await rm(`${o.disk}.medic-bitmap`, { force: true });
    const start = clock.now();
    const total = source.sectors * SECTOR_SIZE;
    let copied = 0;
    const progress = (phase: DeployProgress["phase"], guestDoneAtMs: number | null = null) =>
      o.onProgress?.({
        atMs: clock.now() - start,
        localBytes: copied,
        totalBytes: total,
        fetchedBytes: copied,
        phase,
        guestDoneAtMs,
      });
    const ticker = setInterval(() => progress("copying"), 200);
    try {
      await copyImage(image, disk, o.blockBytes ?? 1024 * 1024, o.fetchDepth ?? 4, (n) => {
        copied += n;
      });
      await disk.flush();
    } finally {
      clearInterval(ticker);
    }
    const copyMs = clock.now() - start;
    progress("booting");
    guest = await LinuxGuest.load({
      vmlinuz: o.guest.vmlinuz,
      initrd: o.guest.initrd,
      disk,
      mode: o.mode,
      clock,
      onSerial: o.onConsole,
    });
    let readyAt: number | null = null;
    const run = await guest.run({
      timeoutMs: o.timeoutMs,
      onReady: () => {
        readyAt = clock.now() - start;
        progress("booting", readyAt);
      },
    });
    const machine = guest.machine;
    const summary: DeploySummary = {
      os_ready_ms: readyAt,
      deploy_done_ms: copyMs,
      devirtualized_at_ms: null,
      resumed: false,
      local_bytes_at_start: 0,
      image_bytes: total,
      bytes_fetched: total,
      bytes_redirected: 0,
      bytes_background: 0,
      exits_total: machine.mediator ? machine.host.stats.exits : 0,
      exits_after_devirt: machine.host.stats.exitsAfterOff,
      guest_reads: guest.io.mediatedReads + guest.io.directReads,
      guest_writes: guest.io.mediatedWrites + guest.io.directWrites,
      guest_errors: run.errors,
      verified: null,
    };
    const detail = o.verify ? await verifyDisk(source, disk, guest) : null;
    return await finish(o, guest, run, summary, copyMs, detail);
  } finally {
    await guest?.stop();
    await disk?.close();
    await image.close();
  }
}

async function finish(
  o: LinuxDeployOptions,
  guest: LinuxGuest,
  run: LinuxRunResult,
  base: DeploySummary,
  copyMs: number | null,
  detail: VerifyDetail | null,
): Promise<LinuxDeployResult> {
  let guestDisk: GuestDiskCheck | null = null;
  if (o.verify && o.guest.manifest) guestDisk = await checkGuestDisk(o.disk, o.guest.manifest);
  const phases: Record<string, number> = {};
  for (const [k, v] of Object.entries(run.phases)) {
    if (typeof v === "number") phases[k.replace(/Ms$/, "")] = Math.round(v) / 1000;
  }
  const verified = o.verify
    ? detail !== null && detail.bad_sectors.length === 0 && (guestDisk === null || guestDisk.ok)
    : null;
  const summary: LinuxDeploySummary = {
    ...base,
    verified,
    guest: "linux",
    mode: o.mode,
    kernel_cmdline: guest.cmdline,
    copy_ms: copyMs,
    boot_ms: run.readyMs,
    boot_phases: phases,
    guest_end_ms: run.end.tMs,
    guest_end: run.end.reason,
    exits_at_release: run.exitsAtRelease,
    exits_at_end: run.exitsAtEnd,
    verify_detail: detail,
    guest_disk: guestDisk,
  };
  return { summary, run, guest };
}

/** Compares the local disk with the image plus what is known of the guest's writes (module comment). */
export async function verifyDisk(
  image: BlockSource,
  disk: BlockBackend,
  guest: Pick<LinuxGuest, "mediatedWrites" | "directWrites">,
  limit = 10,
): Promise<VerifyDetail> {
  const bad: number[] = [];
  let imageSectors = 0;
  let known = 0;
  let unknown = 0;
  const chunk = 2048;
  for (let lba = 0; lba < image.sectors; lba += chunk) {
    const count = Math.min(chunk, image.sectors - lba);
    const [local, expected] = await Promise.all([disk.read(lba, count), image.read(lba, count)]);
    for (let i = 0; i < count; i++) {
      const sector = lba + i;
      const at = i * SECTOR_SIZE;
      const a = local.subarray(at, at + SECTOR_SIZE);
      let b: Uint8Array;
      if (guest.directWrites.has(sector)) {
        unknown++;
        continue;
      }
      const written = guest.mediatedWrites.get(sector);
      if (written) {
        known++;
        b = written;
      } else {
        imageSectors++;
        b = expected.subarray(at, at + SECTOR_SIZE);
      }
      if (bad.length < limit && Buffer.compare(a, b) !== 0) bad.push(sector);
    }
  }
  return {
    image_sectors: imageSectors,
    guest_sectors_known: known,
    guest_sectors_unknown: unknown,
    bad_sectors: bad,
  };
}

/** Copies the whole image to the disk, `depth` reads of `chunkBytes` in flight. */
async function copyImage(
  image: BlockSource,
  disk: BlockBackend,
  chunkBytes: number,
  depth: number,
  onCopied: (bytes: number) => void,
): Promise<void> {
  const perChunk = Math.max(1, Math.floor(chunkBytes / SECTOR_SIZE));
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < image.sectors) {
      const lba = next;
      const count = Math.min(perChunk, image.sectors - lba);
      next += count;
      const data = await image.read(lba, count);
      await disk.write(lba, data);
      onCopied(data.length);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, depth) }, worker));
}

/** Opens (or creates, sparse) the local disk; it must hold the whole image. */
async function openDisk(path: string, imageSectors: number): Promise<FileBackend> {
  const exists = await stat(path).then(
    (s) => {
      if (!s.isFile()) throw new DeployError(`the disk ${path} is not a regular file`);
      if (s.size < imageSectors * SECTOR_SIZE) {
        throw new DeployError(
          `the disk ${path} is ${s.size} bytes, smaller than the image (${imageSectors * SECTOR_SIZE} bytes)`,
        );
      }
      return true;
    },
    (error: unknown) => {
      if (error instanceof DeployError) throw error;
      return false;
    },
  );
  try {
    return await FileBackend.open(path, {
      writable: true,
      create: !exists,
      sectors: exists ? undefined : imageSectors,
    });
  } catch (error) {
    throw new DeployError(
      `cannot open the disk ${path} for writing: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}
