import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fillLbaPattern, PatternSource } from "../runtime/block/pattern.ts";
import { SparseBackend } from "../runtime/block/sparse.ts";
import { ThrottledSource } from "../runtime/block/throttle.ts";
import { LocalBitmap } from "../runtime/deploy/bitmap.ts";
import { DeploymentEngine } from "../runtime/deploy/engine.ts";
import { AhciGuestDriver } from "../runtime/guest/driver.ts";
import { random, sequential, type WorkloadStats } from "../runtime/guest/workloads.ts";
import { Machine } from "../runtime/machine.ts";
import { RealClock, VirtualClock } from "../runtime/vmx/clock.ts";
import { bareBootMs, runScenario, type ScenarioResult } from "./scenario.ts";

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
  // The same guest with an unlimited link and no background copy: what remains is mediation.
  const noLink = await runScenario({
    clock: new VirtualClock(),
    imageSectors: imageBytes / 512,
    pattern: "zero",
    linkBytesPerSecond: Number.POSITIVE_INFINITY,
    latencyMs: 0,
    backgroundRate: 0,
    workload: "boot",
    stopAtOsReady: true,
  });
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
    overhead_link_ms: ready - noLink.osReadyMs!,
    overhead_mediator_ms: noLink.osReadyMs! - boot,
    bytes_redirected: streaming.bytesRedirected,
    wall_ms: streaming.wallMs,
  };
}

/** 1b. The same comparison in real time, at a size this machine handles. */
export async function osStartupRealtime(o: BenchOptions) {
  const think = o.quick ? 0.2 : 1;
  const link = o.quick ? 4 * GBIT : GBIT;
  o.log(`os start-up, real time: 2 GiB image over ${(link * 8) / 1e9} Gbit/s, think time x${think}`);
  const boot = await bareBootMs(new RealClock(), BOOT_IMAGE_SECTORS, think);
  const streaming = await runScenario({
    clock: new RealClock(),
    imageSectors: BOOT_IMAGE_SECTORS,
    pattern: "zero",
    linkBytesPerSecond: link,
    latencyMs: 0.1,
    workload: "boot",
    thinkTimeScale: think,
  });
  const copyMs = ((BOOT_IMAGE_SECTORS * 512) / link) * 1000;
  return {
    think_time_scale: think,
    link_bytes_per_s: link,
    copy_ms: copyMs,
    boot_ms: boot,
    copy_then_boot_ms: copyMs + boot,
    streaming_ready_ms: streaming.osReadyMs!,
    speedup: (copyMs + boot) / streaming.osReadyMs!,
    overhead_ms: streaming.osReadyMs! - boot,
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

interface IoFigures {
  seq_mb_s: number;
  rand_iops: number;
}

async function guestIo(
  machine: Machine,
  spanSectors: number,
  quick: boolean,
  linuxLike = false,
): Promise<IoFigures> {
  // linuxLike: one interrupt and one doorbell per command, as libahci does (for counting exits).
  const driver = await AhciGuestDriver.open(
    machine,
    linuxLike ? { coalesceInterrupts: false, batchDoorbells: false } : {},
  );
  const seq = await sequential(driver, {
    op: "read",
    blockBytes: 128 * 1024,
    totalBytes: (quick ? 32 : 128) * MiB,
    queueDepth: 8,
    startLba: 0,
  } as Parameters<typeof sequential>[1]);
  const rand = await random(driver, {
    op: "read",
    blockBytes: 4096,
    count: quick ? 3000 : 20000,
    queueDepth: 8,
    seed: 7,
    spanSectors,
  } as Parameters<typeof random>[1]);
  await driver.close();
  return figures(seq, rand);
}

/** A sparse disk of `sectors` whose first half holds the lba pattern (the "already local" part). */
async function halfLocalDisk(sectors: number): Promise<SparseBackend> {
  const disk = new SparseBackend(sectors, 128);
  const chunk = new Uint8Array(4 * MiB);
  for (let lba = 0; lba < sectors / 2; lba += chunk.length / 512) {
    fillLbaPattern(chunk, lba);
    await disk.write(lba, chunk);
  }
  return disk;
}

function figures(seq: WorkloadStats, rand: WorkloadStats): IoFigures {
  for (const w of [seq, rand]) {
    if (w.errors > 0) throw new Error(`${w.name}: ${w.errors} errors, first: ${w.errorMessages[0]}`);
  }
  return { seq_mb_s: seq.mbPerSec, rand_iops: rand.iops };
}

/**
 * 2–4. Guest storage throughput during the deployment (blocks already local, and blocks that must
 * be redirected), after de-virtualization, and bare; and the mediation cost (exits per command,
 * time per exit) in passthrough mode. Real clock, side by side in one process.
 */
export async function throughput(o: BenchOptions) {
  const imageBytes = 1 * GiB;
  const sectors = imageBytes / 512;
  const localSectors = sectors / 2;
  o.log("guest throughput: bare, during deployment, after de-virtualization (real clock)");

  // Every machine reads the same kind of disk (a sparse disk holding the local half), so the
  // ratios compare the paths, not the backends; a first pass warms the JIT.
  await guestIo(
    new Machine({ disks: [await halfLocalDisk(sectors)], clock: new RealClock() }),
    localSectors,
    true,
  );
  const bare = await guestIo(
    new Machine({ disks: [await halfLocalDisk(sectors)], clock: new RealClock() }),
    localSectors,
    o.quick,
  );
  const bareLinux = new Machine({ disks: [await halfLocalDisk(sectors)], clock: new RealClock() });
  const bareLinuxIo = await guestIo(bareLinux, localSectors, o.quick, true);
  const pass = new Machine({ disks: [await halfLocalDisk(sectors)], clock: new RealClock(), mediated: true });
  const passIo = await guestIo(pass, localSectors, o.quick, true);
  const passCommands = pass.mediator!.counters.guestCommands;
  const mediation = {
    exits_per_command: pass.host.stats.exits / passCommands,
    us_per_exit: (pass.host.stats.exitTimeMs * 1000) / pass.host.stats.exits,
    passthrough_rand_iops_ratio: passIo.rand_iops / bareLinuxIo.rand_iops,
    passthrough_seq_ratio: passIo.seq_mb_s / bareLinuxIo.seq_mb_s,
  };

  // The deployment: the first half of the image is already local, the link is 1 Gbit/s.
  const clock = new RealClock();
  const local = await halfLocalDisk(sectors);
  const bitmap = LocalBitmap.inMemory({ blockBytes: 65536, imageSectors: sectors, imageTag: "lba" });
  for (let b = 0; b < (localSectors * 512) / 65536; b++) bitmap.mark(b);
  const machine = new Machine({ disks: [local], clock, mediated: true });
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
  engine.start();
  const during = await guestIo(machine, localSectors, o.quick);
  // Reads of blocks that are not local: redirected, bounded by the link.
  const missDriver = await AhciGuestDriver.open(machine);
  const miss = await sequential(missDriver, {
    op: "read",
    blockBytes: 128 * 1024,
    totalBytes: (o.quick ? 16 : 64) * MiB,
    queueDepth: 8,
    startLba: sectors - ((o.quick ? 16 : 64) * MiB) / 512,
  } as Parameters<typeof sequential>[1]);
  await missDriver.close();
  await engine.finished();
  const exitsAtDevirt = machine.host.stats.exits;
  const after = await guestIo(machine, localSectors, o.quick);
  return {
    bare,
    during,
    after,
    during_deploy_ratio: { seq: during.seq_mb_s / bare.seq_mb_s, rand: during.rand_iops / bare.rand_iops },
    during_deploy_miss_ratio: (miss.mbPerSec * 1e6) / GBIT,
    miss_mb_s: miss.mbPerSec,
    after_devirt_ratio: { seq: after.seq_mb_s / bare.seq_mb_s, rand: after.rand_iops / bare.rand_iops },
    exits_after_devirt: machine.host.stats.exits - exitsAtDevirt + machine.host.stats.exitsAfterOff,
    mediation,
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

export type Timeline = ScenarioResult;
