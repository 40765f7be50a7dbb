import { OverlayBackend } from "../block/overlay.ts";
import { PatternSource } from "../block/pattern.ts";
import { Machine } from "../machine.ts";
import type { ReplayEnvironment } from "./replay.ts";
import type { Trace } from "./trace.ts";

export type ReplayMode = "bare" | "passthrough" | "streaming";
export const REPLAY_MODES: readonly ReplayMode[] = ["bare", "passthrough", "streaming"];

/** Creates the environment a trace runs in for a mode. Streaming comes from the deployment engine. */
export type EnvironmentFactory = (trace: Trace) => Promise<ReplayEnvironment>;

/** Bare: the guest talks to the controller; the disk already holds the image. */
export async function bareEnvironment(trace: Trace): Promise<ReplayEnvironment> {
  return localEnvironment(trace, false);
}

/** Passthrough: the generated mediator traps the registers and passes every command on. */
export async function passthroughEnvironment(trace: Trace): Promise<ReplayEnvironment> {
  return localEnvironment(trace, true);
}

function localEnvironment(trace: Trace, mediated: boolean): ReplayEnvironment {
  const { machine: m } = trace;
  const disk = new OverlayBackend(new PatternSource(m.diskSectors, m.diskPattern, `${m.diskPattern} image`));
  const machine = new Machine({ ramMiB: m.ramMiB, abar: m.abar, disks: [disk], mediated });
  return {
    machine,
    readDisk: (lba, count) => disk.read(lba, count),
    guestIdle: () => !machine.controller.busy && (machine.mediator?.guestIdle() ?? true),
    finish: async () => {},
    close: async () => {
      await machine.controller.idle();
      await disk.close();
    },
  };
}
