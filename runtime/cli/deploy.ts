import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import type { EngineEvent } from "../deploy/engine.ts";
import { DeployError, DeploySession, type DeploySummary, type Workload } from "../deploy/session.ts";
import { workloadByName } from "../deploy/workloads.ts";
import { type Manifest, parseManifest, verifyBlock } from "../sources/manifest.ts";
import type { SourceEvent } from "../sources/options.ts";
import { RealClock } from "../vmx/clock.ts";
import { CliError } from "./errors.ts";
import { formatBytes, formatMs, progressPrinter } from "./progress.ts";

export const USAGE = `usage: medic deploy --image SRC --disk FILE [--workload boot|none|TRACE] [--link-mbps N]
                    [--latency-ms N] [--block-size N] [--background-mbps N [--full-rate-when-idle MS]]
                    [--manifest FILE]
                    [--flush-every-mib N] [--retries N] [--give-up-after S] [--allow-larger-disk]
                    [--verify] [--json]
       medic deploy --guest linux --image SRC --disk FILE [--mode bare|passthrough|streaming]
                    [--guest-dir DIR] [--console] [the options above but --workload]
  SRC: a file path, nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, http(s)://...
  --guest linux: the real Linux guest (npx medic guest build) boots on an emulated PC (v86) from the
  local disk behind medic's AHCI controller; its kernel and initrd come from --guest-dir (default: beside
  a local image file, else .cache/guest). --mode streaming (default) streams the image while it boots;
  bare and passthrough copy the image first (copy-then-boot), passthrough trapping every register
  access to the mediator. --console shows the guest's serial console.
  --background-mbps N: the background copy's rate limit, leaving the rest of the link to the guest's
  reads of blocks not yet local; --full-rate-when-idle MS lifts it while the guest has issued nothing
  for MS milliseconds (until its next command).
  --flush-every-mib N: fetched data is flushed and recorded in the bitmap at least every second and
  every N MiB (default 1024): what a killed run may have to fetch again. --retries N: attempts per fetch before the deployment pauses
  (default 5; the guest's read of a missing block then fails as a disk read error, and the copy tries
  again later). --give-up-after S: a deployment paused that long after the guest's workload ended
  exits 1; run it again to resume (default 60). --allow-larger-disk: a local disk larger than the
  image is used as is (the guest sees its old contents beyond the image).`;

export interface DeployRun {
  readonly summary: DeploySummary;
  readonly bad: readonly number[];
}

/** `medic deploy`: stream an image to a local disk while a guest runs, then step aside. */
export async function deployCommand(args: string[]): Promise<number> {
  const o = parseDeployArgs(args);
  if (o.guest === "linux") return deployLinuxCommand(o);
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
      allowLargerDisk: o.allowLargerDisk,
      linkBytesPerSecond: o.linkMbps ? (o.linkMbps * 1e6) / 8 : undefined,
      latencyMs: o.latencyMs,
      blockBytes,
      backgroundRate: o.backgroundMbps ? (o.backgroundMbps * 1e6) / 8 : undefined,
      fullRateWhenIdleMs: o.fullRateWhenIdleMs,
      flushEveryBytes: o.flushEveryMib === undefined ? undefined : o.flushEveryMib * 2 ** 20,
      retries: o.retries,
      giveUpAfterMs: o.giveUpAfterS === undefined ? undefined : o.giveUpAfterS * 1000,
      verifyBlock: manifest ? (block, data) => verifyBlock(manifest, block, data) : undefined,
      onProgress: progress ? (p) => progress.update(p) : undefined,
      onEvent: o.json ? undefined : printEvent,
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

/** `medic deploy --guest linux`: the real Linux guest boots from the local disk (runtime/platform/v86). */
async function deployLinuxCommand(o: DeployArgs): Promise<number> {
  const { deployLinux, defaultGuestDir, guestFilesIn } = await import("../platform/v86/linux-deploy.ts");
  const { DeployError } = await import("../deploy/session.ts");
  const manifest = o.manifest ? await loadManifest(o.manifest) : null;
  const blockBytes = o.blockBytes ?? manifest?.blockSize;
  if (manifest && blockBytes !== manifest.blockSize) {
    throw new CliError(
      `--block-size ${blockBytes} differs from the manifest's block size ${manifest.blockSize}`,
    );
  }
  const mode = o.mode ?? "streaming";
  const guestDir = o.guestDir ?? defaultGuestDir(o.image);
  const progress = o.json ? null : progressPrinter(process.stderr);
  const tty = process.stderr.isTTY === true;
  try {
    const guest = await guestFilesIn(guestDir);
    if (!o.json) {
      process.stderr.write(
        mode === "streaming"
          ? `medic: booting the Linux guest (${guestDir}) from ${o.disk} while ${o.image} streams in\n`
          : `medic: copying ${o.image} to ${o.disk}, then booting the Linux guest (${guestDir}), ${mode === "bare" ? "with no VMM" : "every register access through the mediator"}\n`,
      );
    }
    const result = await deployLinux({
      image: o.image,
      disk: o.disk,
      mode,
      guest,
      clock: new RealClock(),
      linkBytesPerSecond: o.linkMbps ? (o.linkMbps * 1e6) / 8 : undefined,
      latencyMs: o.latencyMs,
      blockBytes,
      backgroundRate: o.backgroundMbps ? (o.backgroundMbps * 1e6) / 8 : undefined,
      fullRateWhenIdleMs: o.fullRateWhenIdleMs,
      flushEveryBytes: o.flushEveryMib === undefined ? undefined : o.flushEveryMib * 2 ** 20,
      retries: o.retries,
      giveUpAfterMs: o.giveUpAfterS === undefined ? undefined : o.giveUpAfterS * 1000,
      verifyBlock: manifest ? (block, data) => verifyBlock(manifest, block, data) : undefined,
      verify: o.verify,
      onProgress: progress ? (p) => progress.update(p) : undefined,
      onConsole: o.console
        ? (line) => process.stderr.write(`${tty ? "\r\x1b[2K" : ""}| ${line.text}\n`)
        : undefined,
      onEvent: o.json ? undefined : printEvent,
    });
    progress?.done();
    const s = result.summary;
    if (o.json) {
      process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
    } else {
      const lines = [
        `guest: Linux (unmodified) in ${mode} mode; MEDIC-GUEST-READY ${formatMs(s.boot_ms ?? 0)} after power-on` +
          (s.copy_ms !== null ? `, after a ${formatMs(s.copy_ms)} copy` : ""),
        `phases: ${Object.entries(s.boot_phases)
          .map(([k, v]) => `${k} ${v.toFixed(1)}s`)
          .join(", ")}`,
        `OS ready at ${formatMs(s.os_ready_ms ?? 0)} from the start (${s.guest_reads} guest reads, ${s.guest_writes} writes)`,
      ];
      process.stderr.write(`${lines.join("\n")}\n`);
      printSummary({ ...s, os_ready_ms: null }, s.verify_detail?.bad_sectors ?? []);
      if (s.verify_detail) {
        const d = s.verify_detail;
        process.stderr.write(
          `verify: ${d.image_sectors} sectors equal the image, ${d.guest_sectors_known} equal what the guest wrote through the mediator, ` +
            `${d.guest_sectors_unknown} written by the guest with no VMM in the path (not compared)\n`,
        );
      }
      if (s.guest_disk) {
        const files = s.guest_disk.files.map(
          (f) => `${f.path} ${f.ok ? "ok" : f.sha256 === null ? "MISSING" : "WRONG CONTENT"}`,
        );
        process.stderr.write(
          `guest's disk: e2fsck ${s.guest_disk.fsckClean ? "clean" : "FOUND PROBLEMS"}; ${files.join(", ")}\n`,
        );
      }
    }
    return s.verified === false || s.guest_errors.length > 0 ? 1 : 0;
  } catch (error) {
    progress?.done();
    if (error instanceof DeployError) throw new CliError(error.message, 1);
    throw error;
  }
}

/** What the engine and the image source report while they recover from trouble. */
function printEvent(e: EngineEvent | SourceEvent): void {
  const line = (text: string) => process.stderr.write(`\n${text}\n`);
  if ("type" in e) {
    if (e.type === "retry") line(`fetch of block ${e.block} failed (attempt ${e.attempt}): ${e.error}`);
    else if (e.type === "error") line(`deployment error: ${e.error}`);
    else if (e.type === "paused")
      line(
        `deployment paused: ${e.error}; guest reads of missing blocks fail until the image source is back; trying again in ${formatMs(e.retryInMs)}`,
      );
    else if (e.type === "resumed") line(`deployment resumed after ${formatMs(e.pausedMs)}`);
  } else if (e.kind === "reconnecting" || e.kind === "timeout") {
    line(`image server: ${e.kind}${"error" in e && e.error ? ` (${e.error.message})` : ""}`);
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
  guest?: "linux";
  mode?: "bare" | "passthrough" | "streaming";
  guestDir?: string;
  console: boolean;
  linkMbps?: number;
  latencyMs?: number;
  blockBytes?: number;
  backgroundMbps?: number;
  fullRateWhenIdleMs?: number;
  manifest?: string;
  flushEveryMib?: number;
  retries?: number;
  giveUpAfterS?: number;
  allowLargerDisk: boolean;
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
        "full-rate-when-idle": { type: "string" },
        manifest: { type: "string" },
        "flush-every-mib": { type: "string" },
        retries: { type: "string" },
        "give-up-after": { type: "string" },
        "allow-larger-disk": { type: "boolean" },
        verify: { type: "boolean" },
        json: { type: "boolean" },
        guest: { type: "string" },
        mode: { type: "string" },
        "guest-dir": { type: "string" },
        console: { type: "boolean" },
      },
    }));
  } catch (error) {
    throw new CliError(`${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  }
  if (typeof values.image !== "string") throw new CliError(`--image is required\n${USAGE}`);
  if (typeof values.disk !== "string") throw new CliError(`--disk is required\n${USAGE}`);
  if (values["full-rate-when-idle"] !== undefined && values["background-mbps"] === undefined) {
    throw new CliError("--full-rate-when-idle lifts the --background-mbps limit: give that too");
  }
  const guest = values.guest;
  if (guest !== undefined && guest !== "linux")
    throw new CliError(`--guest must be linux, not '${String(guest)}'`);
  const mode = values.mode;
  if (mode !== undefined && mode !== "bare" && mode !== "passthrough" && mode !== "streaming") {
    throw new CliError(`--mode must be bare, passthrough or streaming, not '${String(mode)}'`);
  }
  if (guest === undefined) {
    for (const flag of ["mode", "guest-dir", "console"]) {
      if (values[flag] !== undefined) throw new CliError(`--${flag} needs --guest linux\n${USAGE}`);
    }
  } else if (values.workload !== undefined) {
    throw new CliError("--workload and --guest exclude each other: the guest is the workload");
  }
  return {
    guest,
    mode,
    guestDir: typeof values["guest-dir"] === "string" ? values["guest-dir"] : undefined,
    console: values.console === true,
    image: values.image,
    disk: values.disk,
    workload: typeof values.workload === "string" ? values.workload : "boot",
    linkMbps: positive(values["link-mbps"], "--link-mbps"),
    latencyMs: nonNegative(values["latency-ms"], "--latency-ms"),
    blockBytes: positive(values["block-size"], "--block-size"),
    backgroundMbps: positive(values["background-mbps"], "--background-mbps"),
    fullRateWhenIdleMs: positive(values["full-rate-when-idle"], "--full-rate-when-idle"),
    manifest: typeof values.manifest === "string" ? values.manifest : undefined,
    flushEveryMib: positive(values["flush-every-mib"], "--flush-every-mib"),
    retries: integer(values.retries, "--retries"),
    giveUpAfterS: nonNegative(values["give-up-after"], "--give-up-after"),
    allowLargerDisk: values["allow-larger-disk"] === true,
    verify: values.verify === true,
    json: values.json === true,
  };
}

function positive(value: string | boolean | undefined, flag: string): number | undefined {
  const n = nonNegative(value, flag);
  if (n === 0) throw new CliError(`${flag} must be greater than 0`);
  return n;
}

function integer(value: string | boolean | undefined, flag: string): number | undefined {
  const n = nonNegative(value, flag);
  if (n !== undefined && !Number.isInteger(n))
    throw new CliError(`${flag} needs a whole number, not '${String(value)}'`);
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
