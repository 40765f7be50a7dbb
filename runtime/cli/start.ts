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
 * `npm start`: build the sample image once, deploy it over a throttled link while the recorded
 * Linux boot runs as the guest, verify the disk, and compare with copy-then-boot.
 */
export async function startCommand(_args: string[]): Promise<number> {
  const out = process.stderr;
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
