/**
 * Fetch throughput: a full streaming deployment with an idle guest (no workload), its image served
 * by nbdkit over loopback TCP, against `nbdcopy` and `qemu-img convert` copying the same image
 * from the same server to a local file on the same filesystem. Every copier ends durable: medic's
 * deployment ends after its last flush (fdatasync) and de-virtualization, `nbdcopy --flush` ends
 * with an fsync, and `qemu-img convert -t writeback` with an fdatasync (its default for convert,
 * `-t unsafe`, skips it). The copiers take turns, best of N each, because the machine is noisy.
 *
 *   npx tsx bench/fetch.ts [--quick]     a Markdown table, then the JSON
 *
 * Rates are MB/s (10^6 bytes per second) of image bytes over wall time: for medic from
 * DeploySession.open to run() resolving, for a tool from spawn to exit.
 */
import { execFile } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { open, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { DeploySession } from "../runtime/deploy/session.ts";
import { RealClock } from "../runtime/vmx/clock.ts";
import { makeTempDir, NbdkitServer, removeDir, requireTool } from "../test/sources/servers.ts";
import { markdownTable } from "./common.ts";

const MiB = 1024 * 1024;

export interface FetchBenchOptions {
  readonly quick: boolean;
  readonly log: (line: string) => void;
}

/** The knobs of the fetch path: the engine's background fetches and the NBD client's pipelining. */
export interface FetchSettings {
  /** Background fetches in flight (engine fetchDepth). */
  readonly fetch_depth: number;
  /** Consecutive blocks per background fetch (engine fetchBlocks). */
  readonly fetch_blocks: number;
  /** The deployment's block size (bitmap granularity). */
  readonly block_bytes: number;
  /** NBD_CMD_READs in flight on the connection (NBD source maxInFlight). */
  readonly nbd_max_in_flight: number;
  /** Largest NBD_CMD_READ; bigger fetches are split (NBD source maxRequestBytes). */
  readonly nbd_request_bytes: number;
}

export interface FetchSweepRow extends FetchSettings {
  /** Best of the runs. */
  readonly mb_s: number;
  readonly runs_mb_s: readonly number[];
}

export interface FetchSpeedResult {
  readonly image_bytes: number;
  /** Runs of each copier in the side-by-side comparison (best of these). */
  readonly reps: number;
  /** medic with the engine's and the NBD source's defaults (no tuning options passed). */
  readonly medic_mb_s: number;
  /** Deployments before the comparison, not part of it (the process warming up). */
  readonly warm_ups: number;
  /** The first of them: medic in a fresh process, its JIT cold (defaults too). */
  readonly medic_first_mb_s: number;
  readonly nbdcopy_mb_s: number;
  readonly qemu_img_mb_s: number;
  /** medic ÷ the faster tool. */
  readonly ratio_vs_best: number;
  readonly ratio_vs_nbdcopy: number;
  readonly ratio_vs_qemu_img: number;
  readonly runs_mb_s: {
    readonly medic: readonly number[];
    readonly nbdcopy: readonly number[];
    readonly qemu_img: readonly number[];
  };
  /** What the engine and the NBD source use when given nothing. */
  readonly defaults: FetchSettings;
  readonly sweep: readonly FetchSweepRow[];
  /** The sweep row with the highest rate. */
  readonly best: FetchSweepRow;
  readonly tools: { readonly nbdcopy: string; readonly qemu_img: string };
  readonly wall_s: number;
}

/**
 * The defaults of runtime/deploy/engine.ts (fetchDepth, fetchBlocks), runtime/deploy/session.ts
 * (blockBytes) and runtime/sources/nbd.ts (maxInFlight, maxRequestBytes). medic_mb_s is measured
 * without passing any of them, so it always shows the real defaults; this copy labels the sweep.
 */
export const FETCH_DEFAULTS: FetchSettings = {
  fetch_depth: 8,
  fetch_blocks: 16,
  block_bytes: 64 * 1024,
  nbd_max_in_flight: 16,
  nbd_request_bytes: MiB,
};

const d = FETCH_DEFAULTS;
/**
 * One knob at a time around the defaults, plus bigger blocks (fewer, larger local writes for the
 * same request size). The quick grid keeps the rows that show the trends.
 */
export const FULL_SWEEP: readonly FetchSettings[] = [
  d,
  { ...d, fetch_depth: 2 },
  { ...d, fetch_depth: 32, nbd_max_in_flight: 32 },
  { ...d, fetch_blocks: 4 },
  { ...d, fetch_blocks: 64 },
  { ...d, nbd_request_bytes: 256 * 1024 },
  { ...d, nbd_max_in_flight: 4 },
  { ...d, block_bytes: MiB, fetch_blocks: 1 },
];
export const QUICK_SWEEP: readonly FetchSettings[] = [d, { ...d, fetch_depth: 2 }, { ...d, fetch_blocks: 4 }];

export interface FetchMeasureOptions {
  readonly imageBytes: number;
  /** Runs of each copier in the comparison. */
  readonly reps: number;
  readonly sweep: readonly FetchSettings[];
  /** Rounds over the sweep rows (runs of the second and later rounds only while within budgetMs). */
  readonly sweepReps: number;
  /**
   * Bytes of deployments run first, not measured (at least one): a real deployment copies
   * gigabytes, so the process's warm-up is over for most of it but not in a few hundred MiB.
   */
  readonly warmUpBytes?: number;
  /** Soft limit on the whole measurement: later sweep repetitions are skipped past it. */
  readonly budgetMs?: number;
  readonly log: (line: string) => void;
}

/** The full or the quick (CI smoke) measurement, as `npx tsx bench/fetch.ts [--quick]` runs it. */
export async function fetchSpeed(o: FetchBenchOptions): Promise<FetchSpeedResult> {
  // 384 MiB: every copy takes about half a second or more here, and the full run stays within
  // 100 s; quick (a smoke run inside the two-minute quick bench) ~10 s. The full run warms up with
  // 1 GiB of deployments: medic's rate kept rising over the first three or four of 384 MiB (V8
  // optimizing the hot path), e.g. 619, 715, 749, 753, 821, 864, 886, 909 MB/s in one process.
  return measureFetch(
    o.quick
      ? { imageBytes: 96 * MiB, reps: 2, sweep: QUICK_SWEEP, sweepReps: 1, log: o.log }
      : {
          imageBytes: 384 * MiB,
          reps: 3,
          sweep: FULL_SWEEP,
          sweepReps: 2,
          warmUpBytes: 1024 * MiB,
          budgetMs: 90_000,
          log: o.log,
        },
  );
}

/** The measurement with explicit sizes (the test runs a tiny one). */
export async function measureFetch(o: FetchMeasureOptions): Promise<FetchSpeedResult> {
  if (o.imageBytes <= 0 || o.imageBytes % MiB !== 0)
    throw new Error("imageBytes must be a positive number of MiB");
  const started = performance.now();
  const nbdcopy = requireTool("nbdcopy");
  const qemuImg = requireTool("qemu-img");
  const dir = await makeTempDir("medic-fetch-");
  let server: NbdkitServer | null = null;
  try {
    const image = join(dir, "image.raw");
    const out = join(dir, "out.raw");
    await writeRandomImage(image, o.imageBytes);
    // Read-only file plugin: nbdkit serves the file as is (no holes, nothing for a tool to skip).
    server = await NbdkitServer.start(dir, { plugin: "file", pluginArgs: [`file=${image}`] });
    const url = server.url();
    const mbs = (ms: number) => o.imageBytes / 1e6 / (ms / 1000);
    const toolArgs = {
      nbdcopy: ["--flush", url, out],
      qemu_img: ["convert", "-f", "raw", "-O", "raw", "-t", "writeback", url, out],
    };
    const copiers = {
      nbdcopy: (verify: boolean) => runTool(nbdcopy, toolArgs.nbdcopy, image, out, verify),
      qemu_img: (verify: boolean) => runTool(qemuImg, toolArgs.qemu_img, image, out, verify),
      medic: () => deployOnce(url, image, out, null),
    };
    const runs: Record<keyof typeof copiers, number[]> = { nbdcopy: [], qemu_img: [], medic: [] };
    // Deployments first, not measured: a real one copies gigabytes, so the process's warm-up
    // (JIT tiers, the allocator's heap) is amortized there but not in a copy of a few hundred MiB.
    const warmUps = Math.max(1, Math.ceil((o.warmUpBytes ?? 0) / o.imageBytes));
    o.log(`fetch: ${o.imageBytes / MiB} MiB image from ${url}; ${warmUps} warm-up deployment(s)`);
    const warmUpRates: number[] = [];
    for (let i = 0; i < warmUps; i++) warmUpRates.push(mbs(await copiers.medic()));
    o.log(`fetch: warm-up deployments: ${warmUpRates.map((x) => x.toFixed(0)).join(", ")} MB/s`);
    o.log(`fetch: ${o.reps} rounds of nbdcopy, medic, qemu-img`);
    const order: (keyof typeof copiers)[] = ["nbdcopy", "medic", "qemu_img"];
    for (let rep = 0; rep < o.reps; rep++) {
      // Rotated, so no copier always runs right after the same one.
      for (let i = 0; i < order.length; i++) {
        const name = order[(i + rep) % order.length]!;
        const ms = await copiers[name](rep === 0);
        runs[name].push(mbs(ms));
        o.log(`fetch: round ${rep + 1} ${name}: ${mbs(ms).toFixed(0)} MB/s`);
      }
    }

    const sweepRuns = o.sweep.map(() => [] as number[]);
    const sweepStarted = performance.now();
    let sweepDone = 0;
    rounds: for (let rep = 0; rep < o.sweepReps; rep++) {
      // Alternating direction, so each row's runs are spread over the sweep.
      const indices = o.sweep.map((_, i) => i);
      if (rep % 2 === 1) indices.reverse();
      for (const i of indices) {
        // Past the first round, a run that would end beyond the budget is left out.
        const perRun = (performance.now() - sweepStarted) / Math.max(1, sweepDone);
        if (rep > 0 && o.budgetMs !== undefined && performance.now() - started + perRun > o.budgetMs) {
          o.log(`fetch: sweep stops in round ${rep + 1}: the ${o.budgetMs / 1000} s budget is spent`);
          break rounds;
        }
        const settings = o.sweep[i]!;
        const ms = await deployOnce(url, image, out, settings);
        sweepRuns[i]!.push(mbs(ms));
        sweepDone++;
        o.log(`fetch: sweep ${describeSettings(settings)}: ${mbs(ms).toFixed(0)} MB/s`);
      }
    }

    const best = (xs: readonly number[]) => Math.max(...xs);
    const medic = best(runs.medic);
    const nbd = best(runs.nbdcopy);
    const qemu = best(runs.qemu_img);
    const sweep: FetchSweepRow[] = o.sweep.map((s, i) => ({
      ...s,
      mb_s: best(sweepRuns[i]!),
      runs_mb_s: sweepRuns[i]!,
    }));
    return {
      image_bytes: o.imageBytes,
      reps: o.reps,
      medic_mb_s: medic,
      warm_ups: warmUps,
      medic_first_mb_s: warmUpRates[0]!,
      nbdcopy_mb_s: nbd,
      qemu_img_mb_s: qemu,
      ratio_vs_best: medic / Math.max(nbd, qemu),
      ratio_vs_nbdcopy: medic / nbd,
      ratio_vs_qemu_img: medic / qemu,
      runs_mb_s: runs,
      defaults: FETCH_DEFAULTS,
      sweep,
      best: sweep.reduce((a, b) => (b.mb_s > a.mb_s ? b : a)),
      tools: {
        nbdcopy: `nbdcopy ${toolArgs.nbdcopy.join(" ")}`,
        qemu_img: `qemu-img ${toolArgs.qemu_img.join(" ")}`,
      },
      wall_s: (performance.now() - started) / 1000,
    };
  } finally {
    await server?.stop();
    await removeDir(dir);
  }
}

/** One deployment onto an empty disk; its wall time in ms. The disk must then equal the image. */
async function deployOnce(
  url: string,
  image: string,
  disk: string,
  settings: FetchSettings | null,
): Promise<number> {
  await removeDisk(disk);
  const tuning =
    settings === null
      ? {}
      : {
          blockBytes: settings.block_bytes,
          fetchDepth: settings.fetch_depth,
          fetchBlocks: settings.fetch_blocks,
          sourceOptions: {
            maxInFlight: settings.nbd_max_in_flight,
            maxRequestBytes: settings.nbd_request_bytes,
          },
        };
  const start = performance.now();
  const session = await DeploySession.open({
    image: url,
    disk,
    clock: new RealClock(),
    workload: null,
    ...tuning,
  });
  let ms: number;
  let summary: Awaited<ReturnType<DeploySession["run"]>>;
  try {
    summary = await session.run();
    ms = performance.now() - start;
  } finally {
    await session.close();
  }
  if (summary.deploy_done_ms === null || summary.devirtualized_at_ms === null) {
    throw new Error(`the deployment from ${url} ended without completing or de-virtualizing`);
  }
  await assertSameBytes(image, disk);
  await removeDisk(disk);
  return ms;
}

/** Runs a copying tool to `out` (fresh); its wall time in ms. */
async function runTool(bin: string, args: readonly string[], image: string, out: string, verify: boolean) {
  await rm(out, { force: true });
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    execFile(bin, args, { maxBuffer: 1024 * 1024 }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`${bin} ${args.join(" ")} failed: ${error.message}\n${stderr}`));
      else resolve();
    });
  });
  const ms = performance.now() - start;
  // Once per tool: a tool that copied something else would make the comparison meaningless.
  if (verify) await assertSameBytes(image, out);
  await rm(out, { force: true });
  return ms;
}

async function removeDisk(disk: string): Promise<void> {
  await rm(disk, { force: true });
  await rm(`${disk}.medic-bitmap`, { force: true });
}

/** Non-zero, incompressible data (so no copier can skip holes or zeros), written once. */
async function writeRandomImage(path: string, bytes: number): Promise<void> {
  const handle = await open(path, "w");
  try {
    const chunk = Buffer.allocUnsafe(Math.min(bytes, 8 * MiB));
    for (let at = 0; at < bytes; at += chunk.length) {
      randomFillSync(chunk);
      await handle.write(chunk, 0, Math.min(chunk.length, bytes - at), at);
    }
  } finally {
    await handle.close();
  }
}

/** Throws unless the two files hold the same bytes (the copy's length and content). */
export async function assertSameBytes(expected: string, actual: string): Promise<void> {
  const [a, b] = await Promise.all([stat(expected), stat(actual)]);
  if (a.size !== b.size) throw new Error(`${actual} is ${b.size} bytes, ${expected} is ${a.size}`);
  const [ha, hb] = await Promise.all([open(expected, "r"), open(actual, "r")]);
  try {
    const size = 8 * MiB;
    const ba = Buffer.allocUnsafe(size);
    const bb = Buffer.allocUnsafe(size);
    for (let at = 0; at < a.size; at += size) {
      const n = Math.min(size, a.size - at);
      const [ra, rb] = await Promise.all([ha.read(ba, 0, n, at), hb.read(bb, 0, n, at)]);
      if (ra.bytesRead !== n || rb.bytesRead !== n) throw new Error(`short read comparing at byte ${at}`);
      if (ba.compare(bb, 0, n, 0, n) === 0) continue;
      let i = 0;
      while (ba[i] === bb[i]) i++;
      throw new Error(`${actual} differs from ${expected} at byte ${at + i}`);
    }
  } finally {
    await Promise.all([ha.close(), hb.close()]);
  }
}

function describeSettings(s: FetchSettings): string {
  return (
    `depth ${s.fetch_depth} x ${s.fetch_blocks} blocks of ${s.block_bytes / 1024} KiB, ` +
    `NBD ${s.nbd_max_in_flight} x ${s.nbd_request_bytes / 1024} KiB`
  );
}

function sameSettings(a: FetchSettings, b: FetchSettings): boolean {
  return (
    a.fetch_depth === b.fetch_depth &&
    a.fetch_blocks === b.fetch_blocks &&
    a.block_bytes === b.block_bytes &&
    a.nbd_max_in_flight === b.nbd_max_in_flight &&
    a.nbd_request_bytes === b.nbd_request_bytes
  );
}

/** The comparison and the sweep as Markdown. */
export function fetchMarkdown(r: FetchSpeedResult): string {
  const runs = (xs: readonly number[]) => xs.map((x) => x.toFixed(0)).join(", ");
  const head = markdownTable(
    ["copier", "MB/s (best)", "runs (MB/s)", "medic ÷ it"],
    [
      ["medic (defaults)", r.medic_mb_s, runs(r.runs_mb_s.medic), 1],
      [r.tools.nbdcopy.split(" nbd")[0]!, r.nbdcopy_mb_s, runs(r.runs_mb_s.nbdcopy), r.ratio_vs_nbdcopy],
      [r.tools.qemu_img.split(" nbd")[0]!, r.qemu_img_mb_s, runs(r.runs_mb_s.qemu_img), r.ratio_vs_qemu_img],
      [
        "medic, first deployment of the process",
        r.medic_first_mb_s,
        "(a warm-up)",
        r.medic_mb_s / r.medic_first_mb_s,
      ],
    ],
  );
  const sweep = markdownTable(
    [
      "fetch depth",
      "blocks/fetch",
      "block KiB",
      "fetch KiB",
      "NBD in flight",
      "NBD request KiB",
      "MB/s",
      "runs",
      "",
    ],
    r.sweep.map((s) => [
      s.fetch_depth,
      s.fetch_blocks,
      s.block_bytes / 1024,
      (s.fetch_blocks * s.block_bytes) / 1024,
      s.nbd_max_in_flight,
      s.nbd_request_bytes / 1024,
      s.mb_s,
      runs(s.runs_mb_s),
      [sameSettings(s, r.defaults) ? "default" : "", s === r.best ? "best" : ""].filter(Boolean).join(", "),
    ]),
  );
  return (
    `Fetch throughput, ${r.image_bytes / MiB} MiB image from nbdkit over loopback, best of ${r.reps} ` +
    `(after ${r.warm_ups} warm-up deployment(s)): ` +
    `medic is ${(r.ratio_vs_best * 100).toFixed(0)}% of the faster tool\n\n${head}\n\n` +
    `Settings sweep (medic, same image):\n\n${sweep}\n`
  );
}

async function main(): Promise<void> {
  const quick = process.argv.includes("--quick");
  const result = await fetchSpeed({ quick, log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`${fetchMarkdown(result)}\n${JSON.stringify(result, null, 2)}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
