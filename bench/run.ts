import { writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { markdownTable, writeJson } from "./common.ts";
import {
  backgroundInterference,
  compileTime,
  deployEfficiency,
  osStartupRealtime,
  osStartupVirtual,
  throughput,
} from "./experiments.ts";
import { renderHtml } from "./html.ts";

export interface BenchRunOptions {
  readonly quick: boolean;
  readonly json: string;
  readonly html: string | null;
}

/**
 * `medic bench`: the paper's experiments on medic's runtime. Every figure is a ratio of runs made
 * side by side in this process (virtual-clock runs are exact; real-time ones are noisy), with
 * the absolute numbers behind it. Prints Markdown, writes JSON (and an HTML report).
 */
export async function runBench(o: BenchRunOptions): Promise<Record<string, unknown>> {
  const log = (line: string) => process.stderr.write(`bench: ${line}\n`);
  const started = performance.now();
  const opts = { quick: o.quick, log };
  const compile = await compileTime(opts);
  const paper = await osStartupVirtual(opts);
  const realtime = await osStartupRealtime(opts);
  const efficiency = await deployEfficiency(opts);
  const interference = await backgroundInterference(opts);
  const io = await throughput(opts);

  const result = summarize(o.quick, compile, paper, realtime, efficiency, interference, io, started);
  await writeJson(o.json, result);
  process.stdout.write(`${markdown(result, paper, realtime)}\n`);
  if (o.html) {
    await writeFile(o.html, renderHtml({ result, paper, realtime, timeline: efficiency.timeline, io }));
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
  started: number,
) {
  return {
    machine: {
      cpus: cpus().length,
      cpu: cpus()[0]?.model ?? "unknown",
      node: process.version,
      load_average: loadavg()[0],
    },
    quick,
    os_startup_speedup: paper.speedup,
    os_startup_speedup_realtime: realtime.speedup,
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
      deploy: { idle: efficiency.idle, boot: efficiency.boot },
      throughput: { bare: io.bare, during: io.during, after: io.after, miss_mb_s: io.miss_mb_s },
    },
    wall_s: (performance.now() - started) / 1000,
  };
}

function markdown(
  r: BenchResult,
  paper: Awaited<ReturnType<typeof osStartupVirtual>>,
  realtime: Awaited<ReturnType<typeof osStartupRealtime>>,
): string {
  const s = (ms: number | null) => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`);
  const x = (v: number) => `${v.toFixed(2)}`;
  const rows: (string | number)[][] = [
    [
      "os_startup_speedup",
      `${x(paper.speedup)}x`,
      `${paper.image_bytes / 2 ** 30} GiB over 1 Gbit/s (virtual clock): copy ${s(paper.copy_ms)} + boot ${s(paper.boot_ms)} vs streaming ready at ${s(paper.streaming_ready_ms)} (overhead ${s(paper.overhead_ms)}: link ${s(paper.overhead_link_ms)}, mediator ${s(paper.overhead_mediator_ms)})`,
    ],
    [
      "os_startup_speedup_realtime",
      `${x(realtime.speedup)}x`,
      `2 GiB over ${(realtime.link_bytes_per_s * 8) / 1e9} Gbit/s, real time: copy ${s(realtime.copy_ms)} + boot ${s(realtime.boot_ms)} vs streaming ready at ${s(realtime.streaming_ready_ms)}`,
    ],
    [
      "during_deploy_ratio (seq / rand)",
      `${x(r.during_deploy_ratio.seq)} / ${x(r.during_deploy_ratio.rand)}`,
      "guest reads of local blocks while the copy runs, vs bare",
    ],
    [
      "during_deploy_miss_ratio",
      x(r.during_deploy_miss_ratio),
      "sequential reads of missing blocks, vs the link's limit",
    ],
    [
      "after_devirt_ratio (seq / rand)",
      `${x(r.after_devirt_ratio.seq)} / ${x(r.after_devirt_ratio.rand)}`,
      `vs bare; exits after de-virtualization: ${r.exits_after_devirt}`,
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
    [
      "compile_ms (cold / warm)",
      `${(r.compile_ms.cold_ms ?? 0).toFixed(0)} / ${r.compile_ms.warm_ms.toFixed(0)} ms`,
      "spec/ahci.med",
    ],
  ];
  return markdownTable(["figure", "value", "what"], rows);
}
