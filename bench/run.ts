import { writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { markdownTable, writeJson } from "./common.ts";
import {
  backgroundInterference,
  compileTime,
  deployEfficiency,
  linuxAssets,
  osStartupLinux,
  osStartupRealtime,
  osStartupVirtual,
  throughput,
} from "./experiments.ts";
import { type FetchSpeedResult, fetchSpeed } from "./fetch.ts";
import { renderHtml } from "./html.ts";

export interface BenchRunOptions {
  readonly quick: boolean;
  /**
   * Leave out the real Linux guest (os_startup_speedup_linux), e.g. on a host without SeaBIOS or
   * apt to build it. Only ever by this explicit option: otherwise a guest that cannot be built or
   * booted fails the bench.
   */
  readonly noLinux?: boolean;
  /** Leave out the fetch-speed comparison (it needs nbdkit, nbdcopy and qemu-img). */
  readonly noFetch?: boolean;
  readonly json: string;
  readonly html: string | null;
}

/**
 * `medic bench`: the paper's experiments on medic's runtime. Every figure is a ratio of runs made
 * side by side in this process (virtual-clock runs are exact; real-time ones are noisy), with
 * the absolute numbers behind it. Prints Markdown, writes JSON (and an HTML report).
 */
export async function runBench(o: BenchRunOptions): Promise<Record<string, unknown>> {
  const started = performance.now();
  const log = (line: string) =>
    process.stderr.write(
      `bench: [${((performance.now() - started) / 1000).toFixed(0).padStart(3)} s] ${line}\n`,
    );
  const loadAtStart = loadavg()[0]!;
  const opts = { quick: o.quick, log };
  const guest = o.noLinux ? null : await linuxAssets(opts);
  const compile = await compileTime(opts);
  const paper = await osStartupVirtual(opts);
  const realtime = await osStartupRealtime(opts);
  const efficiency = await deployEfficiency(opts);
  const interference = await backgroundInterference(opts);
  const io = await throughput(opts);
  const fetch = o.noFetch ? null : await fetchSpeed(opts);
  if (fetch === null) log("fetch speed against nbdcopy and qemu-img: left out (--no-fetch)");
  // Last, with nothing else of the bench running: its two boots run side by side in child processes.
  const linux = guest === null ? null : await osStartupLinux(opts, guest);
  if (linux === null) log("os start-up, real Linux: left out (--no-linux)");

  const result = summarize(o.quick, compile, paper, realtime, efficiency, interference, io, linux, fetch, {
    started,
    loadAtStart,
  });
  await writeJson(o.json, result);
  process.stdout.write(`${markdown(result, paper, realtime, linux)}\n`);
  if (o.html) {
    await writeFile(
      o.html,
      renderHtml({ result, paper, realtime, linux, timeline: efficiency.timeline, io }),
    );
    log(`wrote ${o.html}`);
  }
  log(`wrote ${o.json} in ${result.wall_s.toFixed(0)} s`);
  return result;
}

type BenchResult = ReturnType<typeof summarize>;

function summarize(
  quick: boolean,
  compile: Awaited<ReturnType<typeof compileTime>>,
  paper: Awaited<ReturnType<typeof osStartupVirtual>>,
  realtime: Awaited<ReturnType<typeof osStartupRealtime>>,
  efficiency: Awaited<ReturnType<typeof deployEfficiency>>,
  interference: Awaited<ReturnType<typeof backgroundInterference>>,
  io: Awaited<ReturnType<typeof throughput>>,
  linux: Awaited<ReturnType<typeof osStartupLinux>> | null,
  fetch: FetchSpeedResult | null,
  run: { started: number; loadAtStart: number },
) {
  return {
    machine: {
      cpus: cpus().length,
      cpu: cpus()[0]?.model ?? "unknown",
      node: process.version,
      /** 1-minute load average when the bench started and when it ended (2 cores: above 2, neighbours). */
      load_average_start: run.loadAtStart,
      load_average: loadavg()[0],
    },
    quick,
    os_startup_speedup: paper.speedup,
    os_startup_speedup_realtime: realtime.speedup,
    /** null only with --no-linux. */
    os_startup_speedup_linux: linux?.speedup ?? null,
    /** A full deployment from nbdkit over loopback against nbdcopy and qemu-img convert (null with --no-fetch). */
    fetch_speed:
      fetch === null
        ? null
        : {
            medic_mb_s: fetch.medic_mb_s,
            /** medic's first deployment in the process (not in the ratios). */
            medic_first_mb_s: fetch.medic_first_mb_s,
            nbdcopy_mb_s: fetch.nbdcopy_mb_s,
            qemu_img_mb_s: fetch.qemu_img_mb_s,
            ratio_vs_nbdcopy: fetch.ratio_vs_nbdcopy,
            ratio_vs_qemu_img: fetch.ratio_vs_qemu_img,
          },
    during_deploy_ratio: io.during_deploy_ratio,
    during_deploy_miss_ratio: io.during_deploy_miss_ratio,
    after_devirt_ratio: io.after_devirt_ratio,
    exits_after_devirt: io.exits_after_devirt,
    mediation_cost: io.mediation,
    deploy_efficiency: { idle: efficiency.idle.efficiency, boot: efficiency.boot.efficiency },
    background_interference: interference,
    compile_ms: compile,
    details: {
      os_startup: paper,
      os_startup_realtime: realtime,
      os_startup_linux: linux ?? { skipped: "--no-linux" },
      fetch: fetch ?? { skipped: "--no-fetch" },
      deploy: { idle: efficiency.idle, boot: efficiency.boot },
      throughput: {
        repetitions: io.repetitions,
        pairs_per_repetition: io.pairs_per_repetition,
        bare: io.bare,
        during: io.during,
        after: io.after,
        miss_mb_s: io.miss_mb_s,
        cpu_ratio: io.cpu_ratio,
        best_ratio: io.best_ratio,
        spread: io.spread,
      },
    },
    wall_s: (performance.now() - run.started) / 1000,
  };
}

function markdown(
  r: BenchResult,
  paper: Awaited<ReturnType<typeof osStartupVirtual>>,
  realtime: Awaited<ReturnType<typeof osStartupRealtime>>,
  linux: Awaited<ReturnType<typeof osStartupLinux>> | null,
): string {
  const s = (ms: number | null) => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`);
  const x = (v: number) => `${v.toFixed(2)}`;
  const ms = (v: number) => `${v.toFixed(0)} ms`;
  const pair = (v: { seq: number; rand: number }) => `${x(v.seq)} / ${x(v.rand)}`;
  const t = r.details.throughput;
  const rows: (string | number)[][] = [
    [
      "os_startup_speedup",
      `${x(paper.speedup)}x`,
      `${paper.image_bytes / 2 ** 30} GiB over 1 Gbit/s (virtual clock): copy ${s(paper.copy_ms)} + boot ${s(paper.boot_ms)} vs streaming ready at ${s(paper.streaming_ready_ms)} (overhead ${s(paper.overhead_ms)}: link ${s(paper.overhead_link_ms)}, mediator ${s(paper.overhead_mediator_ms)})`,
    ],
    [
      "os_startup_speedup_realtime",
      `${x(realtime.speedup)}x`,
      `2 GiB over ${(realtime.link_bytes_per_s * 8) / 1e9} Gbit/s, real time (best of ${realtime.runs_ms.bare.length}): copy ${s(realtime.copy_ms)} + boot ${s(realtime.boot_ms)} vs streaming ready at ${s(realtime.streaming_ready_ms)} (overhead ${ms(realtime.overhead_ms)}: link ${ms(realtime.overhead_link_ms)}, mediator ${ms(realtime.overhead_mediator_ms)})`,
    ],
    linux === null
      ? ["os_startup_speedup_linux", "-", "left out (--no-linux)"]
      : [
          "os_startup_speedup_linux",
          `${x(linux.speedup)}x`,
          `real Linux on v86, ${linux.image_bytes / 2 ** 20} MiB over ${linux.link_mbit_s} Mbit/s, real time${linux.pairs > 1 ? ` (best of ${linux.pairs})` : ""}: copy ${s(linux.copy_ms)} + boot ${s(linux.bare_boot_ms)} vs streaming ready at ${s(linux.streaming_ready_ms)} (${(linux.bytes_redirected / 2 ** 20).toFixed(1)} MiB redirected)`,
        ],
    [
      "during_deploy_ratio (seq / rand)",
      `${x(r.during_deploy_ratio.seq)} / ${x(r.during_deploy_ratio.rand)}`,
      `guest reads of local blocks while the copy runs, vs bare (medians of ${t.repetitions} × ${t.pairs_per_repetition} samples; per CPU second ${pair(t.cpu_ratio.during)})`,
    ],
    [
      "during_deploy_miss_ratio",
      x(r.during_deploy_miss_ratio),
      "sequential reads of missing blocks, vs the link's limit",
    ],
    [
      "after_devirt_ratio (seq / rand)",
      `${x(r.after_devirt_ratio.seq)} / ${x(r.after_devirt_ratio.rand)}`,
      `vs bare (median of ${t.repetitions * t.pairs_per_repetition} back-to-back pairs; per CPU second ${pair(t.cpu_ratio.after)}); exits after de-virtualization: ${r.exits_after_devirt}`,
    ],
    [
      "mediation_cost",
      `${x(r.mediation_cost.exits_per_command)} exits/cmd`,
      `${x(r.mediation_cost.us_per_exit)} µs per exit; passthrough IOPS ${x(r.mediation_cost.passthrough_rand_iops_ratio)} of bare`,
    ],
    [
      "deploy_efficiency (idle / boot)",
      `${x(r.deploy_efficiency.idle)} / ${x(r.deploy_efficiency.boot)}`,
      "(image ÷ link) ÷ time until every block is local",
    ],
    [
      "background_interference",
      r.background_interference.map((b) => `${b.rate_fraction * 100}%: ${x(b.slowdown)}`).join(", "),
      "boot time with the copy at a share of the link, vs no background copy",
    ],
    r.fetch_speed === null
      ? ["fetch_speed", "-", "left out (--no-fetch)"]
      : [
          "fetch_speed (vs nbdcopy / qemu-img)",
          `${x(r.fetch_speed.ratio_vs_nbdcopy)} / ${x(r.fetch_speed.ratio_vs_qemu_img)}`,
          `full deployment from nbdkit over loopback, idle guest: ${r.fetch_speed.medic_mb_s.toFixed(0)} MB/s vs ${r.fetch_speed.nbdcopy_mb_s.toFixed(0)} / ${r.fetch_speed.qemu_img_mb_s.toFixed(0)} MB/s, all ending durable (best of ${r.details.fetch && "reps" in r.details.fetch ? r.details.fetch.reps : "-"}, after ${r.details.fetch && "warm_ups" in r.details.fetch ? r.details.fetch.warm_ups : "-"} warm-up deployment(s); the first one ${r.fetch_speed.medic_first_mb_s.toFixed(0)} MB/s)`,
        ],
    [
      "compile_ms (cold / warm)",
      `${(r.compile_ms.cold_ms ?? 0).toFixed(0)} / ${r.compile_ms.warm_ms.toFixed(0)} ms`,
      "spec/ahci.med",
    ],
  ];
  return markdownTable(["figure", "value", "what"], rows);
}
