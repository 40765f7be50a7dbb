import { PatternSource } from "../block/pattern.ts";
import { SparseBackend } from "../block/sparse.ts";
import { Machine } from "../machine.ts";
import type { ReplayEnvironment } from "../replay/replay.ts";
import type { Trace } from "../replay/trace.ts";
import { LocalBitmap } from "./bitmap.ts";
import { DeploymentEngine } from "./engine.ts";

/** Block size of streaming replays: the deployment default. */
const BLOCK_BYTES = 64 * 1024;

/**
 * Streaming mode of `medic replay`: the local disk starts empty, the trace's disk pattern is the
 * image source, the engine redirects reads of missing blocks and copies the rest in the
 * background while the trace runs, and `finish` runs the deployment to de-virtualization.
 */
export async function streamingEnvironment(trace: Trace): Promise<ReplayEnvironment> {
  const m = trace.machine;
  const image = new PatternSource(m.diskSectors, m.diskPattern, `${m.diskPattern} image`);
  const local = new SparseBackend(m.diskSectors, 128, "empty local disk");
  const machine = new Machine({ ramMiB: m.ramMiB, abar: m.abar, disks: [local], mediated: true });
  const bitmap = LocalBitmap.inMemory({ blockBytes: BLOCK_BYTES, imageSectors: m.diskSectors, imageTag: m.diskPattern });
  const engine = new DeploymentEngine({
    device: machine.mediator!,
    image,
    bitmap,
    clock: machine.clock,
    devirtualize: () => machine.devirtualize(),
  });
  engine.start();
  return {
    machine,
    readDisk: (lba, count) => engine.readAsGuest(lba, count, (l, c) => local.read(l, c)),
    guestIdle: () => !machine.controller.busy && (!machine.host.on || machine.mediator!.guestIdle()),
    finish: async (maxMs) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the deployment did not finish within ${maxMs} ms`)), maxMs);
      });
      try {
        await Promise.race([engine.finished(), timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    close: async () => {
      engine.stop();
      await machine.controller.idle();
      await local.close();
    },
  };
}
