import { parseArgs } from "node:util";
import { CliError } from "./errors.ts";

/** `medic bench [--quick] [--json FILE] [--html FILE]` (= `npm run bench`). */
export async function benchCommand(args: string[]): Promise<number> {
  let values: { quick?: boolean; json?: string; html?: string };
  try {
    ({ values } = parseArgs({
      args,
      options: { quick: { type: "boolean" }, json: { type: "string" }, html: { type: "string" } },
    }));
  } catch (error) {
    throw new CliError(
      `${error instanceof Error ? error.message : String(error)}\nusage: medic bench [--quick] [--json FILE] [--html FILE]`,
    );
  }
  const { runBench } = await import("../../bench/run.ts");
  await runBench({
    quick: values.quick === true,
    json: values.json ?? "bench/results/bench.json",
    html: values.html ?? null,
  });
  return 0;
}
