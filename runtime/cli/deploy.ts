import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { DeployError, DeploySession, type DeploySummary, type Workload } from "../deploy/session.ts";
import { workloadByName } from "../deploy/workloads.ts";
import { type Manifest, parseManifest, verifyBlock } from "../sources/manifest.ts";
import { RealClock } from "../vmx/clock.ts";
import { CliError } from "./errors.ts";
import { formatBytes, formatMs, progressPrinter } from "./progress.ts";

const USAGE = `usage: medic deploy --image SRC --disk FILE [--workload boot|none|TRACE] [--link-mbps N]
                    [--latency-ms N] [--block-size N] [--background-mbps N] [--manifest FILE]
                    [--verify] [--json]
  SRC: a file path, nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, http(s)://...`;

export interface DeployRun {
  readonly summary: DeploySummary;
  readonly bad: readonly number[];
}

/** `medic deploy`: stream an image to a local disk while a guest runs, then step aside. */
export async function deployCommand(args: string[]): Promise<number> {
  const o = parseDeployArgs(args);
  const clock = new RealClock();
  const manifest = o.manifest ? await loadManifest(o.manifest) : null;
  const blockBytes = o.blockBytes ?? manifest?.blockSize;
  if (manifest && blockBytes !== manifest.blockSize) {
    throw new CliError(
      `--block-size ${blockBytes} differs from the manifest's block size ${manifest.blockSize}`,
    );
  }
  const workload = await resolveWorkload(o.workload);
  const progress = o.json ? null : progressPrinter(process.stderr);
  let session: DeploySession;
  try {
    session = await DeploySession.open({
      image: o.image,
      disk: o.disk,
      clock,
      workload,
      linkBytesPerSecond: o.linkMbps ? (o.linkMbps * 1e6) / 8 : undefined,
      latencyMs: o.latencyMs,
      blockBytes,
      backgroundRate: o.backgroundMbps ? (o.backgroundMbps * 1e6) / 8 : undefined,
      verifyBlock: manifest ? (block, data) => verifyBlock(manifest, block, data) : undefined,
      onProgress: progress ? (p) => progress.update(p) : undefined,
      onEvent: (e) => {
        if (o.json) return;
        if ("type" in e) {
          if (e.type === "retry")
            process.stderr.write(`\nfetch of block ${e.block} failed (attempt ${e.attempt}): ${e.error}\n`);
          if (e.type === "error") process.stderr.write(`\ndeployment error: ${e.error}\n`);
        } else if (e.kind === "reconnecting" || e.kind === "timeout") {
          process.stderr.write(
            `\nimage server: ${e.kind}${"error" in e && e.error ? ` (${e.error.message})` : ""}\n`,
          );
        }
      },
    });
  } catch (error) {
    if (error instanceof DeployError) throw new CliError(error.message, 1);
    throw error;
  }
  try {
    if (session.resumed && !o.json) {
      process.stderr.write(
        `resuming: ${formatBytes(session.engine.localBytes)} of ${formatBytes(session.engine.totalBytes)} already local\n`,
      );
    }
    let summary: DeploySummary;
    try {
      summary = await session.run();
    } catch (error) {
      progress?.done();
      throw new CliError(
        `the deployment stopped: ${error instanceof Error ? error.message : String(error)}`,
        1,
      );
    }
    progress?.done();
    let bad: number[] = [];
    if (o.verify) {
      bad = await session.verify(session.workloadResult?.written ?? new Map());
      summary.verified = bad.length === 0;
    }
    if (o.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    else printSummary(summary, bad);
    return summary.verified === false || summary.guest_errors.length > 0 ? 1 : 0;
  } finally {
    await session.close();
  }
}

function printSummary(s: DeploySummary, bad: readonly number[]): void {
  const lines = [
    `image ${formatBytes(s.image_bytes)}: fetched ${formatBytes(s.bytes_fetched)} (redirected to the guest ${formatBytes(s.bytes_redirected)}, background ${formatBytes(s.bytes_background)})${s.resumed ? `, ${formatBytes(s.local_bytes_at_start)} was already local` : ""}`,
    s.os_ready_ms !== null
      ? `guest workload finished at ${formatMs(s.os_ready_ms)} (${s.guest_reads} reads, ${s.guest_writes} writes)`
      : "",
    s.deploy_done_ms !== null ? `every block local at ${formatMs(s.deploy_done_ms)}` : "",
    s.devirtualized_at_ms !== null
      ? `de-virtualized at ${formatMs(s.devirtualized_at_ms)}: ${s.exits_total} VM exits before, ${s.exits_after_devirt} after`
      : "",
    ...s.guest_errors.map((e) => `guest error: ${e}`),
    s.verified === null
      ? ""
      : s.verified
        ? "verify: the disk equals the image plus the guest's writes"
        : `verify: FAILED at sectors ${bad.join(", ")}`,
  ];
  process.stderr.write(`${lines.filter(Boolean).join("\n")}\n`);
}

async function resolveWorkload(name: string): Promise<Workload | null> {
  try {
    return await workloadByName(name);
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
}

async function loadManifest(path: string): Promise<Manifest> {
  try {
    return parseManifest(await readFile(path, "utf8"));
  } catch (error) {
    throw new CliError(
      `cannot use the manifest ${path}: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

interface DeployArgs {
  image: string;
  disk: string;
  workload: string;
  linkMbps?: number;
  latencyMs?: number;
  blockBytes?: number;
  backgroundMbps?: number;
  manifest?: string;
  verify: boolean;
  json: boolean;
}

export function parseDeployArgs(args: string[]): DeployArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        image: { type: "string" },
        disk: { type: "string" },
        workload: { type: "string" },
        "link-mbps": { type: "string" },
        "latency-ms": { type: "string" },
        "block-size": { type: "string" },
        "background-mbps": { type: "string" },
        manifest: { type: "string" },
        verify: { type: "boolean" },
        json: { type: "boolean" },
      },
    }));
  } catch (error) {
    throw new CliError(`${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  }
  if (typeof values.image !== "string") throw new CliError(`--image is required\n${USAGE}`);
  if (typeof values.disk !== "string") throw new CliError(`--disk is required\n${USAGE}`);
  return {
    image: values.image,
    disk: values.disk,
    workload: typeof values.workload === "string" ? values.workload : "boot",
    linkMbps: positive(values["link-mbps"], "--link-mbps"),
    latencyMs: nonNegative(values["latency-ms"], "--latency-ms"),
    blockBytes: positive(values["block-size"], "--block-size"),
    backgroundMbps: positive(values["background-mbps"], "--background-mbps"),
    manifest: typeof values.manifest === "string" ? values.manifest : undefined,
    verify: values.verify === true,
    json: values.json === true,
  };
}

function positive(value: string | boolean | undefined, flag: string): number | undefined {
  const n = nonNegative(value, flag);
  if (n === 0) throw new CliError(`${flag} must be greater than 0`);
  return n;
}

function nonNegative(value: string | boolean | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== "string" || value.trim() === "" || !Number.isFinite(n) || n < 0) {
    throw new CliError(`${flag} needs a non-negative number, not '${String(value)}'`);
  }
  return n;
}
