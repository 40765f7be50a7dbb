import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { streamingEnvironment } from "../deploy/streaming-replay.ts";
import {
  bareEnvironment,
  type EnvironmentFactory,
  passthroughEnvironment,
  REPLAY_MODES,
  type ReplayMode,
} from "../replay/modes.ts";
import { replayTrace } from "../replay/replay.ts";
import { parseTrace, TraceError } from "../replay/trace.ts";
import { CliError } from "./errors.ts";

/** The environment each mode replays in. */
export const environments: Partial<Record<ReplayMode, EnvironmentFactory>> = {
  bare: bareEnvironment,
  passthrough: passthroughEnvironment,
  streaming: streamingEnvironment,
};

/**
 * `medic replay TRACE... [--mode bare|passthrough|streaming]`: one line per failed expectation,
 * then "N passed, N failed". Exit 0 all passed, 1 an expectation failed, 2 a trace is malformed.
 */
export async function replayCommand(args: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(args);
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
  const mode = (parsed.values.mode ?? "bare") as ReplayMode;
  if (!REPLAY_MODES.includes(mode))
    throw new CliError(`unknown mode '${mode}' (bare, passthrough or streaming)`);
  const factory = environments[mode];
  if (!factory) throw new CliError(`mode '${mode}' is not available`);
  if (parsed.positionals.length === 0) throw new CliError("no trace given");

  let passed = 0;
  let failed = 0;
  let malformed = false;
  for (const file of parsed.positionals) {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch {
      process.stdout.write(`${file}: cannot read the file\n`);
      malformed = true;
      continue;
    }
    try {
      const trace = parseTrace(text, file);
      const env = await factory(trace);
      try {
        const result = await replayTrace(trace, env);
        for (const f of result.failures)
          process.stdout.write(`${trace.name}:${f.line}: ${f.op}: ${f.message}\n`);
        passed += result.passed;
        failed += result.failed;
      } finally {
        await env.close();
      }
    } catch (error) {
      if (!(error instanceof TraceError)) throw error;
      process.stdout.write(`${file}:${error.line}: malformed trace: ${error.message}\n`);
      malformed = true;
    }
  }
  process.stdout.write(`${passed} passed, ${failed} failed\n`);
  return malformed ? 2 : failed > 0 ? 1 : 0;
}

function parse(args: string[]) {
  return parseArgs({ args, allowPositionals: true, options: { mode: { type: "string", short: "m" } } });
}
