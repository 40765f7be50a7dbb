/** Runs medic's command line (bin/medic.mjs) as a child process, the way a user does. */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../", import.meta.url));
export const MEDIC = join(ROOT, "bin/medic.mjs");

export interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface CliChild {
  readonly child: ChildProcess;
  readonly done: Promise<CliRun>;
  /** What the command has written to stderr so far. */
  stderr(): string;
}

/** Starts `medic ARGS` from the project root (MEDIC_DEBUG off, so errors print as users see them). */
export function startMedic(args: readonly string[]): CliChild {
  const child = spawn(process.execPath, [MEDIC, ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MEDIC_DEBUG: "" },
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const done = new Promise<CliRun>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done, stderr: () => stderr };
}

/** Runs `medic ARGS` to its end; `during` runs alongside, watching its stderr (and fails the run if it throws). */
export async function runMedic(
  args: readonly string[],
  during?: (stderr: () => string) => Promise<void>,
): Promise<CliRun> {
  const run = startMedic(args);
  const [result] = await Promise.all([run.done, during?.(run.stderr)]);
  return result;
}
