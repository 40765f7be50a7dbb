import { parseArgs } from "node:util";
import { CliError } from "./errors.ts";

export const USAGE = "usage: medic bench [--quick] [--json FILE] [--html FILE] [--no-linux] [--no-fetch]";

/**
 * `medic bench [--quick] [--json FILE] [--html FILE] [--no-linux]` (= `npm run bench`).
 *
 * --no-linux leaves out the real Linux guest's OS start-up (os_startup_speedup_linux is then null
 * and the table says so), for hosts that cannot build or boot it (no SeaBIOS, no apt). Without it,
 * a guest that cannot be built or booted fails the bench: the figure is never silently skipped.
 * --no-fetch likewise leaves out the fetch-speed comparison (nbdkit, nbdcopy, qemu-img).
 */
export async function benchCommand(args: string[]): Promise<number> {
  let values: { quick?: boolean; json?: string; html?: string; "no-linux"?: boolean; "no-fetch"?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        quick: { type: "boolean" },
        json: { type: "string" },
        html: { type: "string" },
        "no-linux": { type: "boolean" },
        "no-fetch": { type: "boolean" },
      },
    }));
  } catch (error) {
    throw new CliError(`${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  }
  const { runBench } = await import("../../bench/run.ts");
  await runBench({
    quick: values.quick === true,
    noLinux: values["no-linux"] === true,
    noFetch: values["no-fetch"] === true,
    json: values.json ?? "bench/results/bench.json",
    html: values.html ?? null,
  });
  return 0;
}
