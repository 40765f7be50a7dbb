import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { streamingEnvironment } from "../../runtime/deploy/streaming-replay.ts";
import {
  bareEnvironment,
  type EnvironmentFactory,
  passthroughEnvironment,
} from "../../runtime/replay/modes.ts";
import { replayTrace } from "../../runtime/replay/replay.ts";
import { parseTrace } from "../../runtime/replay/trace.ts";

const shared = new URL("../../../shared/traces/", import.meta.url).pathname;
const conformance = new URL("../conformance/traces/", import.meta.url).pathname;

function traces(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith(".jsonl"))
      .map((f) => join(dir, f));
  } catch {
    return [];
  }
}

const files = [...traces(shared), ...traces(conformance)];
const modes: [string, EnvironmentFactory][] = [
  ["bare", bareEnvironment],
  ["passthrough", passthroughEnvironment],
  ["streaming", streamingEnvironment],
];

describe("every trace passes in every mode: the guest cannot tell them apart", () => {
  it("finds the shared example traces", () => {
    expect(traces(shared).length).toBeGreaterThanOrEqual(3);
  });
  for (const file of files) {
    for (const [mode, factory] of modes) {
      it(`${file.replace(/^.*\//, "")} in ${mode} mode`, async () => {
        const trace = parseTrace(readFileSync(file, "utf8"), file);
        const env = await factory(trace);
        try {
          const result = await replayTrace(trace, env);
          expect(result.failures).toEqual([]);
          expect(result.passed).toBeGreaterThan(0);
        } finally {
          await env.close();
        }
      });
    }
  }
});
