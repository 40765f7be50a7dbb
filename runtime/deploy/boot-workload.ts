import { fillLbaPattern } from "../block/pattern.ts";
import { SECTOR_SIZE } from "../block/types.ts";
import { AhciGuestDriver } from "../guest/driver.ts";
import { bootReplay, loadBlockTrace } from "../guest/workloads.ts";
import type { Workload } from "./session.ts";

/** The recorded Linux boot (block requests with timing) that ships beside the project. */
export const BOOT_TRACE = new URL("../../../shared/data/boot-blockio.jsonl", import.meta.url).pathname;

export interface BootWorkloadOptions {
  readonly path?: string;
  /** 1 keeps the recorded think time between requests; 0 replays back to back. */
  readonly thinkTimeScale?: number;
  /** Receives when each request was issued (clock ms from the start) and what it was. */
  readonly collect?: (requests: { t: number; op: string }[]) => void;
}

/**
 * The guest of `--workload boot`: our driver initialises the controller as Linux does, then
 * replays the recorded boot up to "multi-user reached" (the shutdown I/O is left out), with
 * its think time. Writes carry the lba pattern, so --verify knows what they put on the disk.
 */
export function bootWorkload(options: BootWorkloadOptions = {}): Workload {
  return {
    name: "boot",
    async run(env) {
      const all = await loadBlockTrace(options.path ?? BOOT_TRACE);
      const records = all.filter((r) => r.phase !== "linux-shutdown");
      const driver = await AhciGuestDriver.open(env.machine);
      const stats = await bootReplay(driver, records, { thinkTimeScale: options.thinkTimeScale ?? 1 });
      options.collect?.(stats.requests.map((r) => ({ t: r.issuedAt, op: r.op })));
      const written = new Map<number, Uint8Array>();
      for (const r of records) {
        if (r.op !== "write") continue;
        const data = new Uint8Array(r.sectors * SECTOR_SIZE);
        fillLbaPattern(data, r.lba);
        for (let i = 0; i < r.sectors; i++)
          written.set(r.lba + i, data.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE));
      }
      return { reads: stats.reads, writes: stats.writes, written, errors: [...stats.errorMessages] };
    },
  };
}
