import { existsSync } from "node:fs";
import { mkdir, open, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { OverlayBackend } from "../block/overlay.ts";
import { fillLbaPattern, PatternSource } from "../block/pattern.ts";
import { bootWorkload } from "../deploy/boot-workload.ts";
import { DeploySession } from "../deploy/session.ts";
import { Machine } from "../machine.ts";
import { RealClock, VirtualClock } from "../vmx/clock.ts";
import { formatBytes, formatMs, progressPrinter } from "./progress.ts";

/** The embedded default: a 2 GiB image (what the recorded boot reads) over a 1 Gbit/s link. */
const SAMPLE_SECTORS = 4 * 1024 * 1024;
const LINK_MBPS = 1000;
const CACHE = ".cache/sample";

/**
 * The real guest's deployment: its 64 MiB disk over this link, the background copy at half of it
 * while the guest is busy (so its reads of blocks not yet local do not queue behind the copy) and
 * at the whole link while it is idle (before its disk driver starts, between bursts, after the boot).
 */
const LINUX_LINK_MBPS = 10;
const LINUX_BACKGROUND_MBPS = 5;
/** Once the guest has been idle this long (its boot done), the copy takes the whole link. */
const LINUX_FULL_RATE_WHEN_IDLE_MS = 1000;
const GUEST_DIR = ".cache/guest";

/**
 * `npm start`: the real Linux guest (an unmodified kernel on the v86 PC) when its assets can be built
 * here; otherwise the recorded Linux boot over the sample image. Either way: deploy over a throttled
 * link while the guest boots, verify the disk, and compare with copy-then-boot.
 */
export async function startCommand(_args: string[]): Promise<number> {
  const out = process.stderr;
  const guest = await realGuest(out);
  if (guest) return startLinux(out, guest);
  return startRecorded(out);
}

/** Builds (or finds cached) the real guest; null, having said why, when this host cannot. */
async function realGuest(out: NodeJS.WriteStream): Promise<{ disk: string } | null> {
  const fallback = (why: string) => {
    out.write(
      `medic: the real Linux guest is not available here: ${why}\nmedic: using the recorded Linux boot instead\n`,
    );
    return null;
  };
  const { SEABIOS_BIOS } = await import("../platform/v86/machine.ts");
  if (!existsSync(SEABIOS_BIOS)) return fallback(`no SeaBIOS at ${SEABIOS_BIOS} (apt-get install seabios)`);
  for (const tool of ["mke2fs", "debugfs", "e2fsck"]) {
    if (!["/usr/sbin", "/sbin"].some((d) => existsSync(`${d}/${tool}`))) {
      return fallback(`no ${tool} (apt-get install e2fsprogs)`);
    }
  }
  const { buildGuest } = await import("../guest/linux/build.ts");
  out.write(
    `medic: preparing the real Linux guest in ${GUEST_DIR}: Debian's i386 kernel (linux-image-686, unmodified), an initramfs with its AHCI modules and a 64 MiB ext4 disk (built once, then cached)\n`,
  );
  try {
    const assets = await buildGuest({ outDir: GUEST_DIR, log: (line) => out.write(`medic: ${line}\n`) });
    return { disk: assets.disk };
  } catch (error) {
    return fallback(`building it failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** The real guest: streaming deployment while it boots, then the same guest copy-then-boot. */
async function startLinux(out: NodeJS.WriteStream, guest: { disk: string }): Promise<number> {
  const { deployLinux, guestFilesIn } = await import("../platform/v86/linux-deploy.ts");
  const files = await guestFilesIn(GUEST_DIR);
  await mkdir(CACHE, { recursive: true });
  const disk = join(CACHE, "linux-disk.raw");
  await rm(disk, { force: true });
  await rm(`${disk}.medic-bitmap`, { force: true });
  const imageBytes = (await stat(guest.disk)).size;
  out.write(
    `\nmedic: streaming the guest's ${formatBytes(imageBytes)} disk over a ${LINUX_LINK_MBPS} Mbit/s link (background copy at ${LINUX_BACKGROUND_MBPS} Mbit/s while the guest is busy, the whole link once it is idle) ` +
      "while the unmodified Linux kernel boots from the local disk, on an emulated PC (v86) with medic's AHCI controller behind the generated mediator\n",
  );
  const progress = progressPrinter(process.stderr);
  const streaming = await deployLinux({
    image: guest.disk,
    disk,
    mode: "streaming",
    guest: files,
    linkBytesPerSecond: (LINUX_LINK_MBPS * 1e6) / 8,
    backgroundRate: (LINUX_BACKGROUND_MBPS * 1e6) / 8,
    fullRateWhenIdleMs: LINUX_FULL_RATE_WHEN_IDLE_MS,
    verify: true,
    onProgress: (p) => progress.update(p),
  });
  progress.done();
  const s = streaming.summary;
  const d = s.verify_detail!;
  out.write(
    [
      `guest: MEDIC-GUEST-READY at ${formatMs(s.os_ready_ms ?? 0)} (${s.guest_reads} reads, ${s.guest_writes} writes; ${formatBytes(s.bytes_redirected)} served from the image before it was local)`,
      `every block local at ${formatMs(s.deploy_done_ms ?? 0)}, de-virtualized at ${formatMs(s.devirtualized_at_ms ?? 0)}`,
      `VM exits: ${s.exits_total} while mediating, ${s.exits_after_devirt} after de-virtualization (${s.exits_at_end - (s.exits_at_release ?? 0)} while the guest wrote, synced and re-read its second file with the VMM off)`,
      `verify: ${d.bad_sectors.length === 0 ? "ok" : `FAILED at sectors ${d.bad_sectors.join(", ")}`}: ${d.image_sectors} sectors equal the image, ${d.guest_sectors_known} what the guest wrote through the mediator; ${d.guest_sectors_unknown} written after de-virtualization (not compared)`,
      `guest's disk: e2fsck ${s.guest_disk?.fsckClean ? "clean" : "FOUND PROBLEMS"}; ${(s.guest_disk?.files ?? []).map((f) => `${f.path} ${f.ok ? "ok" : "BAD"}`).join(", ")}`,
      ...s.guest_errors.map((e) => `guest error: ${e}`),
      "",
    ].join("\n"),
  );
  if (s.verified !== true || s.guest_errors.length > 0) return 1;

  out.write("medic: the same guest, copy-then-boot: the disk copied first, then booted with no VMM\n");
  const bare = await deployLinux({ image: guest.disk, disk, mode: "bare", guest: files });
  const bootMs = bare.summary.boot_ms ?? 0;
  const copyMs = ((imageBytes * 8) / (LINUX_LINK_MBPS * 1e6)) * 1000;
  const conventional = copyMs + bootMs;
  const streamingReady = s.os_ready_ms ?? 0;
  out.write(
    [
      `copy-then-boot on the same link: image copy ${formatMs(copyMs)} + boot ${formatMs(bootMs)} = OS ready at ${formatMs(conventional)}`,
      `streaming with medic: OS ready at ${formatMs(streamingReady)}  (${(conventional / streamingReady).toFixed(2)}x sooner)`,
      "",
    ].join("\n"),
  );
  return bare.summary.guest_errors.length > 0 ? 1 : 0;
}

/** The recorded Linux boot (a trace of a real boot's disk I/O) over the 2 GiB sample image. */
async function startRecorded(out: NodeJS.WriteStream): Promise<number> {
  const image = await sampleImage(out);
  const disk = join(CACHE, "disk.raw");
  await rm(disk, { force: true });
  await rm(`${disk}.medic-bitmap`, { force: true });

  out.write(
    `\nmedic: streaming ${formatBytes(SAMPLE_SECTORS * 512)} over a ${LINK_MBPS} Mbit/s link while the recorded Linux boot runs as the guest\n`,
  );
  const progress = progressPrinter(process.stderr);
  const session = await DeploySession.open({
    image,
    disk,
    clock: new RealClock(),
    workload: bootWorkload(),
    linkBytesPerSecond: (LINK_MBPS * 1e6) / 8,
    onProgress: (p) => progress.update(p),
  });
  let streamingReady: number;
  try {
    const summary = await session.run();
    progress.done();
    const bad = await session.verify(session.workloadResult?.written ?? new Map());
    out.write(
      [
        `guest boot finished at ${formatMs(summary.os_ready_ms ?? 0)} (${summary.guest_reads} reads, ${summary.guest_writes} writes; ${formatBytes(summary.bytes_redirected)} redirected to it)`,
        `every block local at ${formatMs(summary.deploy_done_ms ?? 0)}, de-virtualized at ${formatMs(summary.devirtualized_at_ms ?? 0)}`,
        `VM exits: ${summary.exits_total} while mediating, ${summary.exits_after_devirt} after de-virtualization`,
        bad.length === 0
          ? "verify: the local disk equals the image plus the guest's writes"
          : `verify FAILED at sectors ${bad.join(", ")}`,
        "",
      ].join("\n"),
    );
    if (bad.length > 0) return 1;
    streamingReady = summary.os_ready_ms ?? 0;
  } finally {
    await session.close();
  }

  // Copy-then-boot on the same link: the whole image crosses it, then the same boot runs bare.
  const copyMs = ((SAMPLE_SECTORS * 512 * 8) / (LINK_MBPS * 1e6)) * 1000;
  const bootMs = await bareBootMs();
  const conventional = copyMs + bootMs;
  out.write(
    [
      "copy-then-boot for the same image and link:",
      `  image copy ${formatMs(copyMs)} + boot ${formatMs(bootMs)} = OS ready at ${formatMs(conventional)}`,
      `streaming with medic: OS ready at ${formatMs(streamingReady)}  (${(conventional / streamingReady).toFixed(1)}x sooner)`,
      "",
    ].join("\n"),
  );
  return 0;
}

/** The same boot on a bare machine with the image already local (virtual clock: same pacing, no wait). */
async function bareBootMs(): Promise<number> {
  const clock = new VirtualClock();
  const disk = new OverlayBackend(new PatternSource(SAMPLE_SECTORS, "lba"));
  const machine = new Machine({ disks: [disk], clock });
  const start = clock.now();
  await clock.run(async () => {
    await bootWorkload().run({
      machine,
      readDisk: (lba, count) => disk.read(lba, count),
      guestIdle: () => !machine.controller.busy,
      finish: async () => {},
      close: async () => {},
    });
  });
  return clock.now() - start;
}

/** The sample image: the lba pattern, built once into .cache/sample/image.raw. */
async function sampleImage(out: NodeJS.WriteStream): Promise<string> {
  const path = join(CACHE, "image.raw");
  const ready = await stat(path).then(
    (s) => s.size === SAMPLE_SECTORS * 512,
    () => false,
  );
  if (ready) return path;
  await mkdir(CACHE, { recursive: true });
  out.write(`medic: building the sample image ${path} (${formatBytes(SAMPLE_SECTORS * 512)}, once)...\n`);
  const handle = await open(`${path}.tmp`, "w");
  try {
    const chunk = 65536;
    const buffer = new Uint8Array(chunk * 512);
    for (let lba = 0; lba < SAMPLE_SECTORS; lba += chunk) {
      fillLbaPattern(buffer, lba);
      await handle.write(buffer, 0, buffer.length, lba * 512);
    }
  } finally {
    await handle.close();
  }
  await rename(`${path}.tmp`, path);
  return path;
}
