import { readFile } from "node:fs/promises";
import { replayTrace } from "../replay/replay.ts";
import { parseTrace, TraceError } from "../replay/trace.ts";
import type { Workload } from "./session.ts";

/** `--workload`: none, boot (the recorded Linux boot), or a guest trace file. */
export async function workloadByName(name: string): Promise<Workload | null> {
  if (name === "none") return null;
  if (name === "boot") return (await import("./boot-workload.ts")).bootWorkload();
  return traceWorkload(name);
}

/** A guest trace as the workload: its expectations are checked against the deploying machine. */
async function traceWorkload(path: string): Promise<Workload> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new Error(`--workload: '${path}' is not boot, none or a readable trace file`);
  }
  let trace: ReturnType<typeof parseTrace>;
  try {
    trace = parseTrace(text, path);
  } catch (error) {
    if (error instanceof TraceError)
      throw new Error(`${path}:${error.line}: malformed trace: ${error.message}`);
    throw error;
  }
  return {
    name: trace.name,
    async run(env) {
      const result = await replayTrace(trace, env);
      const stats = env.machine.controller.stats;
      return {
        reads: stats.commands,
        writes: 0,
        written: new Map(),
        errors: result.failures.map((f) => `${trace.name}:${f.line}: ${f.op}: ${f.message}`),
      };
    },
  };
}
