import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { fillLbaPattern, PatternSource } from "../runtime/block/pattern.ts";
import { SparseBackend } from "../runtime/block/sparse.ts";
import { ThrottledSource } from "../runtime/block/throttle.ts";
import { type BlockBackend, BlockError, checkRange, SECTOR_SIZE } from "../runtime/block/types.ts";
import { LocalBitmap } from "../runtime/deploy/bitmap.ts";
import { DeploymentEngine } from "../runtime/deploy/engine.ts";
import { AhciGuestDriver } from "../runtime/guest/driver.ts";
import { random, sequential, type WorkloadStats } from "../runtime/guest/workloads.ts";
import { Machine } from "../runtime/machine.ts";
import { RealClock, VirtualClock } from "../runtime/vmx/clock.ts";
import { bareBootMs, passthroughBootMs, runScenario, type ScenarioResult } from "./scenario.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** The recorded boot reads up to LBA 4194304: its image is 2 GiB. */
const BOOT_IMAGE_SECTORS = (2 * GiB) / 512;
const GBIT = 1e9 / 8;

export interface BenchOptions {
  readonly quick: boolean;
  readonly log: (line: string) => void;
}

/** 1. OS start-up: copy-then-boot against streaming, at the paper's scale on the virtual clock. */
export async function osStartupVirtual(o: BenchOptions) {
  const imageBytes = o.quick ? 8 * GiB : 32 * GiB;
  const link = GBIT;
  o.log(`os start-up, virtual clock: ${imageBytes / GiB} GiB image over 1 Gbit/s`);
  const boot = await bareBootMs(new VirtualClock(), imageBytes / 512);
  const streaming = await runScenario({
    clock: new VirtualClock(),
    imageSectors: imageBytes / 512,
    pattern: "zero",
    linkBytesPerSecond: link,
    latencyMs: 0.1,
    workload: "boot",
    stopAtOsReady: true,
  });
  // The same boot through the mediator with the image already local: what mediation costs. The
  // rest of the overhead is the link's (waiting for blocks not yet local).
  const mediated = await passthroughBootMs(new VirtualClock(), imageBytes / 512);
  const copyMs = (imageBytes / link) * 1000;
  const ready = streaming.osReadyMs!;
  return {
    image_bytes: imageBytes,
    link_bytes_per_s: link,
    copy_ms: copyMs,
    boot_ms: boot,
    copy_then_boot_ms: copyMs + boot,
    streaming_ready_ms: ready,
    speedup: (copyMs + boot) / ready,
    overhead_ms: ready - boot,
    overhead_link_ms: ready - mediated,
    overhead_mediator_ms: mediated - boot,
    passthrough_boot_ms: mediated,
    bytes_redirected: streaming.bytesRedirected,
    wall_ms: streaming.wallMs,
  };
}

/**
 * 1b. The same comparison in real time, at a size this machine handles, with the overhead (streaming
 * ready minus the bare boot) split like the virtual-clock run's: the boot through the mediator with
 * the image already local (passthrough) is the mediator's part; the rest is the link's.
 *
 * Each of the three runs (bare, streaming, passthrough) is repeated, interleaved, with the order
 * reversed every other round, and the best (shortest) of each is used: the boot is paced by its
 * recorded think time, and this machine's noise (timer lateness, other processes) only ever makes a
 * run end later. Every run is kept in the JSON. In full runs the first streaming run goes on until
 * the whole image is local (deploy_done_ms); the others stop at OS ready.
 */
export async function osStartupRealtime(o: BenchOptions) {
  // Quick: a tenth of the recorded think time (2.3 s per boot), so that the six runs fit the budget.
  const think = o.quick ? 0.1 : 1;
  const link = o.quick ? 4 * GBIT : GBIT;
  const rounds = 2;
  o.log(
    `os start-up, real time: 2 GiB image over ${(link * 8) / 1e9} Gbit/s, think time x${think}; bare, streaming and passthrough runs, best of ${rounds}`,
  );
  const runs = { bare: [] as number[], streaming: [] as number[], passthrough: [] as number[] };
  let first: ScenarioResult | undefined;
  for (let round = 0; round < rounds; round++) {
    const order: (keyof typeof runs)[] = ["bare", "streaming", "passthrough"];
    if (round % 2 === 1) order.reverse();
    for (const kind of order) {
      collectGarbage();
      if (kind === "bare") {
        runs.bare.push(await bareBootMs(new RealClock(), BOOT_IMAGE_SECTORS, think));
        continue;
      }
      if (kind === "passthrough") {
        runs.passthrough.push(await passthroughBootMs(new RealClock(), BOOT_IMAGE_SECTORS, think));
        continue;
      }
      // Full runs: the first streaming run goes on until every block is local (quick: all stop at ready).
      const fullRun = kind === "streaming" && first === undefined && !o.quick;
      const r = await runScenario({
        clock: new RealClock(),
        imageSectors: BOOT_IMAGE_SECTORS,
        pattern: "zero",
        linkBytesPerSecond: link,
        latencyMs: 0.1,
        workload: "boot",
        thinkTimeScale: think,
        stopAtOsReady: !fullRun,
      });
      if (kind === "streaming" && first === undefined) first = r;
      runs[kind].push(r.osReadyMs!);
    }
  }
  const boot = Math.min(...runs.bare);
  const ready = Math.min(...runs.streaming);
  const mediated = Math.min(...runs.passthrough);
  const copyMs = ((BOOT_IMAGE_SECTORS * 512) / link) * 1000;
  const streaming = first!;
  return {
    think_time_scale: think,
    link_bytes_per_s: link,
    copy_ms: copyMs,
    boot_ms: boot,
    copy_then_boot_ms: copyMs + boot,
    streaming_ready_ms: ready,
    speedup: (copyMs + boot) / ready,
    overhead_ms: ready - boot,
    overhead_link_ms: ready - mediated,
    overhead_mediator_ms: mediated - boot,
    passthrough_boot_ms: mediated,
    runs_ms: runs,
    bytes_redirected: streaming.bytesRedirected,
    deploy_done_ms: streaming.doneMs,
    deploy_efficiency_boot: streaming.doneMs ? copyMs / streaming.doneMs : null,
    exits_after_devirt: streaming.exitsAfterDevirt,
  };
}

/** 5. How close the background copy comes to the link's limit, idle guest and booting guest (virtual clock). */
export async function deployEfficiency(o: BenchOptions) {
  const imageBytes = o.quick ? 1 * GiB : 2 * GiB;
  o.log(`deploy efficiency, virtual clock: ${imageBytes / GiB} GiB over 1 Gbit/s, idle and booting guest`);
  const idle = await runScenario({
    clock: new VirtualClock(),
    imageSectors: imageBytes / 512,
    pattern: "zero",
    linkBytesPerSecond: GBIT,
    latencyMs: 0.1,
    workload: "none",
    sampleEveryMs: 100,
  });
  const booting = await runScenario({
    clock: new VirtualClock(),
    imageSectors: BOOT_IMAGE_SECTORS,
    pattern: "zero",
    linkBytesPerSecond: GBIT,
    latencyMs: 0.1,
    workload: "boot",
    sampleEveryMs: 100,
  });
  const ideal = (bytes: number) => (bytes / GBIT) * 1000;
  return {
    idle: {
      image_bytes: imageBytes,
      done_ms: idle.doneMs,
      ideal_ms: ideal(imageBytes),
      efficiency: ideal(imageBytes) / idle.doneMs!,
    },
    boot: {
      image_bytes: BOOT_IMAGE_SECTORS * 512,
      done_ms: booting.doneMs,
      ideal_ms: ideal(BOOT_IMAGE_SECTORS * 512),
      efficiency: ideal(BOOT_IMAGE_SECTORS * 512) / booting.doneMs!,
      os_ready_ms: booting.osReadyMs,
    },
    timeline: booting,
  };
}

/** 6. The background copy's cost to the booting guest, for a few copy rates (virtual clock). */
export async function backgroundInterference(o: BenchOptions) {
  const rates = [0, 0.25, 0.5, 1];
  o.log("background interference, virtual clock: 2 GiB over 1 Gbit/s at copy rates 0, 25, 50, 100 %");
  const rows: { rate_fraction: number; os_ready_ms: number; done_ms: number | null; slowdown: number }[] = [];
  let base = 0;
  for (const fraction of rates) {
    const r = await runScenario({
      clock: new VirtualClock(),
      imageSectors: BOOT_IMAGE_SECTORS,
      pattern: "zero",
      linkBytesPerSecond: GBIT,
      latencyMs: 0.1,
      backgroundRate: fraction === 1 ? Number.POSITIVE_INFINITY : fraction * GBIT,
      workload: "boot",
      stopAtOsReady: fraction === 0 || o.quick,
      thinkTimeScale: 1,
    });
    if (fraction === 0) base = r.osReadyMs!;
    rows.push({
      rate_fraction: fraction,
      os_ready_ms: r.osReadyMs!,
      done_ms: r.doneMs,
      slowdown: r.osReadyMs! / base,
    });
  }
  return rows;
}

/**
 * One sample of a machine's guest throughput: a short sequential run (128 KiB reads) and a short
 * random one (4 KiB reads), both at queue depth 8, per second of real time and per second of this
 * process's CPU time (user + system). These in-memory paths never wait on anything (no link, no
 * device latency), so on a dedicated machine the two agree; on this shared one the wall-clock figure
 * also measures the neighbours (the process is not running for part of the run), the CPU one less.
 */
interface IoFigures {
  seq_mb_s: number;
  rand_iops: number;
  seq_mb_s_cpu: number;
  rand_iops_cpu: number;
}

const IO_FIELDS = ["seq_mb_s", "rand_iops", "seq_mb_s_cpu", "rand_iops_cpu"] as const;

/** Median, best (highest) and spread of one figure over the samples. */
interface Spread {
  median: number;
  best: number;
  min: number;
  max: number;
  samples: number;
}

function spread(values: readonly number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    median: median(sorted),
    best: sorted[sorted.length - 1]!,
    min: sorted[0]!,
    max: sorted[sorted.length - 1]!,
    samples: sorted.length,
  };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

let gcFunction: (() => void) | undefined;

/**
 * A full garbage collection before each measured phase, so no phase pays for the garbage of an
 * earlier one (the disk fill, a finished deployment's buffers). Node's gc() is exposed at run time
 * (the flag only makes the function available); without it this is a no-op.
 */
function collectGarbage(): void {
  if (gcFunction === undefined) {
    try {
      setFlagsFromString("--expose-gc");
      const gc = runInNewContext("gc") as unknown;
      gcFunction = typeof gc === "function" ? (gc as () => void) : () => {};
    } catch {
      gcFunction = () => {};
    }
  }
  gcFunction();
}

/** A workload's stats with the CPU time this process spent during it. */
async function withCpu(run: () => Promise<WorkloadStats>): Promise<{ stats: WorkloadStats; cpuS: number }> {
  const start = process.cpuUsage();
  const stats = await run();
  const used = process.cpuUsage(start);
  return { stats, cpuS: (used.user + used.system) / 1e6 };
}

/**
 * Sizes of one sample: about 20–40 ms each on this machine (bare), long enough to average out short
 * stalls, short enough for many pairs.
 */
const SAMPLE = { seqBytes: 96 * MiB, randCount: 3000 };

/** A guest driver on `machine`; linuxLike: one interrupt and one doorbell per command, as libahci. */
function openDriver(machine: Machine, linuxLike = false): Promise<AhciGuestDriver> {
  return AhciGuestDriver.open(machine, linuxLike ? { coalesceInterrupts: false, batchDoorbells: false } : {});
}

/** One sample: sequential reads from LBA 0, then random reads within the first `spanSectors`. */
async function sample(driver: AhciGuestDriver, spanSectors: number, size = SAMPLE): Promise<IoFigures> {
  const seq = await withCpu(() =>
    sequential(driver, {
      op: "read",
      blockBytes: 128 * 1024,
      totalBytes: size.seqBytes,
      queueDepth: 8,
      startLba: 0,
    } as Parameters<typeof sequential>[1]),
  );
  const rand = await withCpu(() =>
    random(driver, {
      op: "read",
      blockBytes: 4096,
      count: size.randCount,
      queueDepth: 8,
      seed: 7,
      spanSectors,
    } as Parameters<typeof random>[1]),
  );
  for (const { stats: w } of [seq, rand]) {
    if (w.errors > 0) throw new Error(`${w.name}: ${w.errors} errors, first: ${w.errorMessages[0]}`);
  }
  return {
    seq_mb_s: seq.stats.mbPerSec,
    rand_iops: rand.stats.iops,
    seq_mb_s_cpu: seq.stats.bytes / 1e6 / seq.cpuS,
    rand_iops_cpu: rand.stats.ops / rand.cpuS,
  };
}

/**
 * A new machine's (and driver's) first commands are slower: guest RAM pages touched for the first
 * time, the controller's first commands. Every driver does an unmeasured run before its samples.
 */
async function warmUp(driver: AhciGuestDriver, spanSectors: number): Promise<void> {
  await sample(driver, spanSectors, { seqBytes: 16 * MiB, randCount: 2000 });
}

/** Samples of two paths in pairs, alternating the order (A B, B A, A B ...). */
async function interleaved(
  a: AhciGuestDriver,
  b: AhciGuestDriver,
  spanSectors: number,
  count: number,
): Promise<{ a: IoFigures[]; b: IoFigures[] }> {
  collectGarbage();
  const out = { a: [] as IoFigures[], b: [] as IoFigures[] };
  for (let i = 0; i < count; i++) {
    if (i % 2 === 0) {
      out.a.push(await sample(a, spanSectors));
      out.b.push(await sample(b, spanSectors));
    } else {
      out.b.push(await sample(b, spanSectors));
      out.a.push(await sample(a, spanSectors));
    }
  }
  return out;
}

/** Per field, a / b. */
function divide(a: IoFigures, b: IoFigures): IoFigures {
  return Object.fromEntries(IO_FIELDS.map((k) => [k, a[k] / b[k]])) as unknown as IoFigures;
}

/** Per field, the median over the figures. */
function medianOf(figures: readonly IoFigures[]): IoFigures {
  return Object.fromEntries(
    IO_FIELDS.map((k) => [k, median(figures.map((f) => f[k]))]),
  ) as unknown as IoFigures;
}

/**
 * The throughput machines' disk: its first sectors are the shared local half (one SparseBackend
 * filled once with the lba pattern, only ever read here), the rest its own sparse tail (what a
 * deployment copies in). Bare, during and after machines all read the same head through this same
 * class, so their ratios compare the I/O paths only, and no machine pays for filling the head.
 */
class SplitDisk implements BlockBackend {
  readonly sectors: number;
  readonly description = "split disk (shared local half, own tail)";

  constructor(
    private readonly head: SparseBackend,
    private readonly tail: SparseBackend,
  ) {
    this.sectors = head.sectors + tail.sectors;
  }

  #headPart(lba: number, count: number): number {
    checkRange(this.description, this.sectors, lba, count);
    return Math.max(0, Math.min(count, this.head.sectors - lba));
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    const inHead = this.#headPart(lba, count);
    if (inHead === count) return this.head.read(lba, count);
    if (inHead === 0) return this.tail.read(lba - this.head.sectors, count);
    const out = new Uint8Array(count * SECTOR_SIZE);
    await this.readInto(lba, count, out, 0);
    return out;
  }

  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    const inHead = this.#headPart(lba, count);
    if (inHead > 0) await this.head.readInto(lba, inHead, target, offset);
    if (inHead < count) {
      await this.tail.readInto(
        lba + inHead - this.head.sectors,
        count - inHead,
        target,
        offset + inHead * SECTOR_SIZE,
      );
    }
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    if (this.#headPart(lba, data.length / SECTOR_SIZE) > 0) {
      throw new BlockError(`${this.description}: the shared local half is read-only (LBA ${lba})`, "io");
    }
    await this.tail.write(lba - this.head.sectors, data);
  }

  async flush(): Promise<void> {
    await this.tail.flush();
  }

  async close(): Promise<void> {
    await this.tail.close();
  }
}

/** The local half: `sectors` of the lba pattern, filled once and shared by every machine. */
async function localHalf(sectors: number): Promise<SparseBackend> {
  const disk = new SparseBackend(sectors, 128, "local half");
  const chunk = new Uint8Array(4 * MiB);
  for (let lba = 0; lba < sectors; lba += chunk.length / 512) {
    fillLbaPattern(chunk, lba);
    await disk.write(lba, chunk);
  }
  return disk;
}

/** What one repetition of the throughput experiment measured (every path, fresh machines). */
interface IoRep {
  during: IoFigures[];
  /** Pairs: after[i] and bare[i] ran one right after the other. */
  after: IoFigures[];
  bare: IoFigures[];
  /** Pairs likewise. */
  passthrough: IoFigures[];
  bare_libahci: IoFigures[];
  miss_mb_s: number;
  /** Of the missing-block reads, the share served from the image (1: none had been copied yet). */
  miss_redirected: number;
  exits_per_command: number;
  us_per_exit: number;
  exits_after_devirt: number;
  /** The background copy was still running when the last "during" sample ended. */
  copy_running_during: boolean;
}

/**
 * 2–4. Guest storage throughput during the deployment (blocks already local, and blocks that must
 * be redirected), after de-virtualization, and bare; and the mediation cost (exits per command,
 * time per exit) in passthrough mode. Real clock, side by side in one process.
 *
 * Each repetition uses fresh machines: the deployment's "during" samples while its background copy
 * runs, its reads of missing blocks, then, once the copy is complete and the VMM off, its "after"
 * samples in pairs with a bare machine's (A B, B A, ...), and libahci-style passthrough samples in
 * pairs with bare ones likewise. A ratio is the median over the pairs of after ÷ bare (passthrough ÷
 * bare); "during" cannot pair with bare (while the deployment's guest is idle its copy runs at full
 * speed in this process and would slow the bare sample), so its ratio is the median of the during
 * samples ÷ the median of the bare samples taken just after them in the same repetition, and then
 * the median over repetitions.
 *
 * Medians of pairs rather than best-of-N: the load on this shared machine is not rare spikes but a
 * few other processes running all along (load 4–8 on 2 cores), which slow most samples, by varying
 * amounts; the best sample of each path is then a matter of luck (it wandered by ±50 % between two
 * runs), while two samples taken back to back see nearly the same load, so their ratio cancels it
 * and the median drops the pairs a burst fell on. Best, median, min and max of every path, per real
 * and per CPU second, are kept in the JSON.
 *
 * What keeps the paths comparable: every machine reads the same disk (SplitDisk over one shared
 * local half) with the same driver settings and sample sizes; bare machines run with no VMM at all
 * (host off: no interrupt exits), as the de-virtualized one does; a discarded first repetition warms
 * the JIT on every path; every driver gets an unmeasured warm-up run; a full GC runs before every
 * measured phase; and "after" starts only once the copy is complete and the VMM is off (asserted).
 */
export async function throughput(o: BenchOptions) {
  const headSectors = (256 * MiB) / 512;
  const tailSectors = (128 * MiB) / 512;
  const sectors = headSectors + tailSectors;
  const missBytes = 16 * MiB;
  const reps = o.quick ? 2 : 5;
  const pairs = o.quick ? 10 : 12;
  o.log(
    `guest throughput: bare, during deployment, after de-virtualization (real clock, ${reps} repetitions × ${pairs} pairs of samples)`,
  );
  const head = await localHalf(headSectors);
  const disk = () => new SplitDisk(head, new SparseBackend(tailSectors, 128, "tail"));

  /** Bare metal has no VMM at all: a bare Machine's host is on and takes device interrupts as exits. */
  const bareMachine = () => {
    const machine = new Machine({ disks: [disk()], clock: new RealClock() });
    machine.host.turnOff();
    return machine;
  };

  const rep = async (count: number): Promise<IoRep> => {
    // The deployment: the head (256 MiB) is already local, the tail (128 MiB) comes over 1 Gbit/s.
    const clock = new RealClock();
    const bitmap = LocalBitmap.inMemory({ blockBytes: 65536, imageSectors: sectors, imageTag: "lba" });
    for (let b = 0; b < (headSectors * 512) / 65536; b++) bitmap.mark(b);
    const machine = new Machine({ disks: [disk()], clock, mediated: true });
    const image = new ThrottledSource(new PatternSource(sectors, "lba"), {
      clock,
      bandwidth: GBIT,
      latency: 0.1,
    });
    const engine = new DeploymentEngine({
      device: machine.mediator!,
      image,
      bitmap,
      clock,
      devirtualize: () => machine.devirtualize(),
    });
    // Warmed up before the copy starts (until then the mediator passes everything through).
    let driver = await openDriver(machine);
    await warmUp(driver, headSectors);
    collectGarbage();
    engine.start();
    const during: IoFigures[] = [];
    for (let i = 0; i < count; i++) during.push(await sample(driver, headSectors));
    const copyRunning = engine.stats.completedAtMs === null;
    // Reads of blocks that are not local (the end of the tail): redirected, bounded by the link.
    const redirected0 = engine.stats.bytesRedirected;
    const miss = await sequential(driver, {
      op: "read",
      blockBytes: 128 * 1024,
      totalBytes: missBytes,
      queueDepth: 8,
      startLba: sectors - missBytes / 512,
    } as Parameters<typeof sequential>[1]);
    if (miss.errors > 0)
      throw new Error(`${miss.name}: ${miss.errors} errors, first: ${miss.errorMessages[0]}`);
    const missRedirected = (engine.stats.bytesRedirected - redirected0) / missBytes;
    await driver.close();
    await engine.finished();
    await machine.controller.idle();
    if (engine.stats.completedAtMs === null || machine.host.on) {
      throw new Error("throughput: the 'after' samples must start with the copy complete and the VMM off");
    }
    const exitsAtDevirt = machine.host.stats.exits;

    // After de-virtualization, in pairs with a bare machine.
    const bare = bareMachine();
    driver = await openDriver(machine);
    const bareDriver = await openDriver(bare);
    await warmUp(driver, headSectors);
    await warmUp(bareDriver, headSectors);
    const afterBare = await interleaved(driver, bareDriver, headSectors, count);
    await driver.close();
    await bareDriver.close();
    if (bare.host.stats.exits !== 0) throw new Error("throughput: the bare machine took VM exits");

    // The mediation cost: libahci-style commands, passthrough in pairs with bare.
    const bareLinux = bareMachine();
    const pass = new Machine({ disks: [disk()], clock: new RealClock(), mediated: true });
    const bareLinuxDriver = await openDriver(bareLinux, true);
    const passDriver = await openDriver(pass, true);
    await warmUp(bareLinuxDriver, headSectors);
    await warmUp(passDriver, headSectors);
    const exits0 = pass.host.stats.exits;
    const exitMs0 = pass.host.stats.exitTimeMs;
    const commands0 = pass.mediator!.counters.guestCommands;
    const mediated = await interleaved(passDriver, bareLinuxDriver, headSectors, count);
    const exits = pass.host.stats.exits - exits0;
    const exitMs = pass.host.stats.exitTimeMs - exitMs0;
    const commands = pass.mediator!.counters.guestCommands - commands0;
    await passDriver.close();
    await bareLinuxDriver.close();
    return {
      during,
      after: afterBare.a,
      bare: afterBare.b,
      passthrough: mediated.a,
      bare_libahci: mediated.b,
      miss_mb_s: miss.mbPerSec,
      miss_redirected: missRedirected,
      exits_per_command: exits / commands,
      us_per_exit: (exitMs * 1000) / exits,
      exits_after_devirt: machine.host.stats.exits - exitsAtDevirt + machine.host.stats.exitsAfterOff,
      copy_running_during: copyRunning,
    };
  };

  // A first, shorter repetition warms the JIT on every path and is not counted.
  await rep(2);
  const runs: IoRep[] = [];
  for (let i = 0; i < reps; i++) runs.push(await rep(pairs));

  const path = (f: (r: IoRep) => IoFigures[]) => {
    const samples = runs.flatMap(f);
    return Object.fromEntries(IO_FIELDS.map((k) => [k, spread(samples.map((s) => s[k]))])) as Record<
      (typeof IO_FIELDS)[number],
      Spread
    >;
  };
  const medians = (s: ReturnType<typeof path>): IoFigures =>
    Object.fromEntries(IO_FIELDS.map((k) => [k, s[k].median])) as unknown as IoFigures;
  const bests = (s: ReturnType<typeof path>): IoFigures =>
    Object.fromEntries(IO_FIELDS.map((k) => [k, s[k].best])) as unknown as IoFigures;
  const bareS = path((r) => r.bare);
  const duringS = path((r) => r.during);
  const afterS = path((r) => r.after);
  const bareLinuxS = path((r) => r.bare_libahci);
  const passS = path((r) => r.passthrough);
  // The ratios (see above): medians of pairs; during against its repetition's bare samples.
  const pairRatio = (a: (r: IoRep) => IoFigures[], b: (r: IoRep) => IoFigures[]) =>
    medianOf(runs.flatMap((r) => a(r).map((x, i) => divide(x, b(r)[i]!))));
  const duringRatio = medianOf(runs.map((r) => divide(medianOf(r.during), medianOf(r.bare))));
  const afterRatio = pairRatio(
    (r) => r.after,
    (r) => r.bare,
  );
  const passRatio = pairRatio(
    (r) => r.passthrough,
    (r) => r.bare_libahci,
  );
  const miss = spread(runs.map((r) => r.miss_mb_s));
  const seqRand = (f: IoFigures, cpu: boolean) =>
    cpu ? { seq: f.seq_mb_s_cpu, rand: f.rand_iops_cpu } : { seq: f.seq_mb_s, rand: f.rand_iops };
  return {
    repetitions: reps,
    pairs_per_repetition: pairs,
    bare: medians(bareS),
    during: medians(duringS),
    after: medians(afterS),
    during_deploy_ratio: seqRand(duringRatio, false),
    // The best repetition: background fetches already on the link when the misses start (begun in a
    // stall between two samples, when the guest looked idle) only ever slow them down.
    during_deploy_miss_ratio: (miss.best * 1e6) / GBIT,
    miss_mb_s: miss.best,
    after_devirt_ratio: seqRand(afterRatio, false),
    /** The same ratios per CPU second (see IoFigures): what they are on an otherwise idle core. */
    cpu_ratio: { during: seqRand(duringRatio, true), after: seqRand(afterRatio, true) },
    /** Best sample ÷ best sample, for comparison (noisier here: see above). */
    best_ratio: {
      during: seqRand(divide(bests(duringS), bests(bareS)), false),
      after: seqRand(divide(bests(afterS), bests(bareS)), false),
    },
    exits_after_devirt: runs.reduce((n, r) => n + r.exits_after_devirt, 0),
    mediation: {
      exits_per_command: median(runs.map((r) => r.exits_per_command)),
      us_per_exit: median(runs.map((r) => r.us_per_exit)),
      passthrough_rand_iops_ratio: passRatio.rand_iops,
      passthrough_seq_ratio: passRatio.seq_mb_s,
    },
    spread: {
      bare: bareS,
      during: duringS,
      after: afterS,
      bare_libahci: bareLinuxS,
      passthrough: passS,
      miss_mb_s: miss,
      miss_redirected: runs.map((r) => r.miss_redirected),
      us_per_exit: spread(runs.map((r) => r.us_per_exit)),
      /** Repetitions whose background copy was still running at the end of the "during" samples. */
      copy_running_during: runs.filter((r) => r.copy_running_during).length,
    },
  };
}

/** 7. Compiling spec/ahci.med: cold (a fresh process) and warm (in process). */
export async function compileTime(o: BenchOptions) {
  o.log("compile time of spec/ahci.med");
  const script = `
    const t0 = performance.now();
    const { compileSpec } = await import("./generator/compile.ts");
    const src = (await import("node:fs")).readFileSync("spec/ahci.med", "utf8");
    const t1 = performance.now();
    compileSpec(src, { fileName: "spec/ahci.med" });
    const t2 = performance.now();
    console.log(JSON.stringify({ load: t1 - t0, first: t2 - t1 }));`;
  const cold = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    encoding: "utf8",
  });
  const parsed = JSON.parse(cold.stdout.trim().split("\n").pop() ?? "{}") as {
    load?: number;
    first?: number;
  };
  const { compileSpec } = await import("../generator/compile.ts");
  const source = readFileSync(new URL("../spec/ahci.med", import.meta.url), "utf8");
  compileSpec(source, { fileName: "spec/ahci.med" });
  const times: number[] = [];
  for (let i = 0; i < (o.quick ? 3 : 7); i++) {
    const t = performance.now();
    compileSpec(source, { fileName: "spec/ahci.med" });
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return {
    cold_ms: parsed.first ?? null,
    cold_load_ms: parsed.load ?? null,
    warm_ms: times[Math.floor(times.length / 2)]!,
  };
}

/** Where `medic guest build`, `npm start` and the v86 tests keep the real guest's assets. */
const GUEST_DIR = fileURLToPath(new URL("../.cache/guest", import.meta.url));
const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** What one Linux deployment (a child process) reports. */
interface LinuxRun {
  mode: "bare" | "streaming";
  os_ready_ms: number;
  boot_ms: number;
  /** Console milestones since the CPU started (s): setup, kernel, init, rootDisk, guestReady, ... */
  boot_phases: Record<string, number>;
  deploy_done_ms: number | null;
  devirtualized_at_ms: number | null;
  bytes_redirected: number;
  bytes_fetched: number;
  exits_total: number;
  exits_after_devirt: number;
  guest_end: string;
  /** The child's CPU time (user + system): against wall time, how much of a core it had. */
  cpu_ms: number;
  wall_ms: number;
}

/**
 * One deployment of the real guest in a child process (its own core: v86 emulates the PC on the
 * thread that runs it). Prints one line: MEDIC-BENCH-LINUX <json>.
 */
const LINUX_CHILD = `
const o = JSON.parse(process.env.MEDIC_BENCH_LINUX);
const { deployLinux, guestFilesIn } = await import(o.module);
const t0 = performance.now();
const r = await deployLinux({
  image: o.image,
  disk: o.disk,
  mode: o.mode,
  guest: await guestFilesIn(o.guestDir),
  linkBytesPerSecond: o.link ?? undefined,
  timeoutMs: o.timeoutMs,
});
const s = r.summary;
if (s.guest_errors.length > 0 || s.os_ready_ms === null || s.boot_ms === null) {
  console.error("guest errors: " + JSON.stringify(s.guest_errors) + " (ended: " + s.guest_end + ")");
  process.exit(1);
}
const cpu = process.cpuUsage();
process.stdout.write("MEDIC-BENCH-LINUX " + JSON.stringify({
  mode: o.mode,
  os_ready_ms: o.mode === "streaming" ? s.os_ready_ms : s.boot_ms,
  boot_ms: s.boot_ms,
  boot_phases: s.boot_phases,
  deploy_done_ms: o.mode === "streaming" ? s.deploy_done_ms : null,
  devirtualized_at_ms: s.devirtualized_at_ms,
  bytes_redirected: s.bytes_redirected,
  bytes_fetched: s.bytes_fetched,
  exits_total: s.exits_total,
  exits_after_devirt: s.exits_after_devirt,
  guest_end: s.guest_end,
  cpu_ms: (cpu.user + cpu.system) / 1000,
  wall_ms: performance.now() - t0,
}) + "\\n");
`;

function linuxChild(args: {
  mode: "bare" | "streaming";
  image: string;
  disk: string;
  link: number | null;
}): Promise<LinuxRun> {
  const timeoutMs = 420_000;
  const env = {
    ...process.env,
    MEDIC_BENCH_LINUX: JSON.stringify({
      ...args,
      module: new URL("../runtime/platform/v86/linux-deploy.ts", import.meta.url).href,
      guestDir: GUEST_DIR,
      timeoutMs: timeoutMs - 60_000,
    }),
  };
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", LINUX_CHILD], {
      cwd: ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err = (err + d).slice(-4000);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const line = out.split("\n").find((l) => l.startsWith("MEDIC-BENCH-LINUX "));
      if (code === 0 && line) resolve(JSON.parse(line.slice("MEDIC-BENCH-LINUX ".length)) as LinuxRun);
      else {
        reject(
          new Error(
            `the real Linux guest (${args.mode}) failed (${signal ?? `exit ${code}`}): ${err.trim().split("\n").slice(-5).join(" | ")}`,
          ),
        );
      }
    });
  });
}

export interface LinuxAssets {
  readonly disk: string;
  readonly kernelRelease: string;
}

/**
 * The real guest's assets, built once into .cache/guest as `medic guest build` does (a cached build
 * runs no apt command). Called when the bench starts, so a host that cannot build the guest fails
 * at once rather than after the other experiments.
 */
export async function linuxAssets(o: BenchOptions): Promise<LinuxAssets> {
  const hint = "(or run the bench with --no-linux)";
  // Loaded on first use: the bench's other experiments need neither v86 nor the guest builder.
  const { SEABIOS_BIOS } = await import("../runtime/platform/v86/machine.ts");
  const { buildGuest } = await import("../runtime/guest/linux/build.ts");
  if (!existsSync(SEABIOS_BIOS)) {
    throw new Error(`the real Linux guest needs SeaBIOS at ${SEABIOS_BIOS}: apt-get install seabios ${hint}`);
  }
  try {
    const assets = await buildGuest({ outDir: GUEST_DIR, log: (line) => o.log(`guest build: ${line}`) });
    return { disk: assets.disk, kernelRelease: assets.kernelRelease };
  } catch (error) {
    throw new Error(
      `cannot build the real Linux guest in ${GUEST_DIR}: ${error instanceof Error ? error.message : String(error)} ${hint}`,
    );
  }
}

/**
 * 8. OS start-up of the real guest: an unmodified Linux kernel on the v86 PC, its root disk behind
 * medic's AHCI controller (and, streaming, the generated mediator). Copy-then-boot = image ÷ link +
 * the bare boot (the local disk already holds the image, no VMM); streaming = OS ready of a streaming
 * deployment from an empty local disk over the same throttled link. Both in real time.
 *
 * The link: 10 Mbit/s (quick: 20, to keep the quick run short). The 64 MiB image then takes 54 s
 * (27 s) to copy, longer than the boot (30–45 s here), and at 10 Mbit/s the background copy has not
 * yet reached the boot's files (49 MiB into the disk) when Linux mounts its root, so the guest waits on
 * the link for some reads (behind the copy's fetches already in flight: with the engine's defaults up
 * to 8 MiB, 6.7 s at this speed). At 20 Mbit/s the copy is done before Linux finds its disk on all
 * but a quiet machine. Faster links make the copy too short to matter; slower ones only lengthen the
 * run (the streaming run lasts until every block is local).
 *
 * The bare and the streaming deployment run side by side, each in its own process (one core each on
 * this 2-core machine, nothing else of the bench running meanwhile): whatever else loads the machine
 * loads both alike, and the pair takes the time of one boot. Full runs repeat the pair and keep each
 * side's best (noise only slows a boot down).
 */
export async function osStartupLinux(o: BenchOptions, assets: LinuxAssets) {
  const mbps = o.quick ? 20 : 10;
  const link = (mbps * 1e6) / 8;
  const pairs = o.quick ? 1 : 2;
  const imageBytes = (await stat(assets.disk)).size;
  o.log(
    `os start-up, real Linux (${assets.kernelRelease}) on v86: ${imageBytes / MiB} MiB image over ${mbps} Mbit/s, bare and streaming side by side, ${pairs} pair(s)`,
  );
  const dir = await mkdtemp(join(tmpdir(), "medic-bench-linux-"));
  const bare: LinuxRun[] = [];
  const streaming: LinuxRun[] = [];
  try {
    for (let i = 0; i < pairs; i++) {
      const [b, s] = await Promise.all([
        linuxChild({ mode: "bare", image: assets.disk, disk: join(dir, `bare-${i}.img`), link: null }),
        linuxChild({ mode: "streaming", image: assets.disk, disk: join(dir, `streaming-${i}.img`), link }),
      ]);
      o.log(
        `  pair ${i + 1}: bare boot ${(b.boot_ms / 1000).toFixed(1)} s, streaming ready ${(s.os_ready_ms / 1000).toFixed(1)} s (${(s.bytes_redirected / MiB).toFixed(1)} MiB redirected)`,
      );
      bare.push(b);
      streaming.push(s);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const bestBare = bare.reduce((a, b) => (b.boot_ms < a.boot_ms ? b : a));
  const bestStreaming = streaming.reduce((a, b) => (b.os_ready_ms < a.os_ready_ms ? b : a));
  const copyMs = (imageBytes / link) * 1000;
  const bootMs = bestBare.boot_ms;
  const ready = bestStreaming.os_ready_ms;
  // Firmware (SeaBIOS, the kernel's setup and decompression): CPU start to the first kernel line.
  const firmware = (r: LinuxRun) => (r.boot_phases.kernel ?? 0) * 1000;
  return {
    guest: `Linux ${assets.kernelRelease} (unmodified, i386) on v86, medic's AHCI controller`,
    link_bytes_per_s: link,
    link_mbit_s: mbps,
    image_bytes: imageBytes,
    copy_ms: copyMs,
    bare_boot_ms: bootMs,
    bare_firmware_ms: firmware(bestBare),
    copy_then_boot_ms: copyMs + bootMs,
    streaming_ready_ms: ready,
    streaming_firmware_ms: firmware(bestStreaming),
    speedup: (copyMs + bootMs) / ready,
    overhead_ms: ready - bootMs,
    bytes_redirected: bestStreaming.bytes_redirected,
    deploy_done_ms: bestStreaming.deploy_done_ms,
    devirtualized_at_ms: bestStreaming.devirtualized_at_ms,
    exits_after_devirt: bestStreaming.exits_after_devirt,
    pairs,
    runs: { bare, streaming },
  };
}

export type Timeline = ScenarioResult;
