import { PatternSource } from "../block/pattern.ts";
import { SparseBackend } from "../block/sparse.ts";
import { ThrottledSource } from "../block/throttle.ts";
import { Machine } from "../machine.ts";
import type { ReplayEnvironment } from "../replay/replay.ts";
import type { Trace } from "../replay/trace.ts";
import { LocalBitmap } from "./bitmap.ts";
import { DEFAULT_FETCH_ARENA_BYTES, DeploymentEngine } from "./engine.ts";

/** Block size of streaming replays: the deployment default. */
const BLOCK_BYTES = 64 * 1024;

export interface StreamingOptions {
  /** The image link: bytes per second (default unlimited) and latency per request. */
  readonly linkBytesPerSecond?: number;
  readonly latencyMs?: number;
  readonly blockBytes?: number;
}

export interface StreamingEnvironment extends ReplayEnvironment {
  readonly engine: DeploymentEngine;
  readonly local: SparseBackend;
}

/**
 * Streaming mode of `medic replay`: the local disk starts empty, the trace's disk pattern is the
 * image source, the engine redirects reads of missing blocks and copies the rest in the
 * background while the trace runs, and `finish` runs the deployment to de-virtualization.
 */
export async function streamingEnvironment(
  trace: Trace,
  options: StreamingOptions = {},
): Promise<StreamingEnvironment> {
  const m = trace.machine;
  const pattern = new PatternSource(m.diskSectors, m.diskPattern, `${m.diskPattern} image`);
  const local = new SparseBackend(m.diskSectors, 128, "empty local disk");
  const machine = new Machine({
    ramMiB: m.ramMiB,
    abar: m.abar,
    disks: [local],
    mediated: true,
    dmaBytes: DEFAULT_FETCH_ARENA_BYTES,
  });
  const image =
    options.linkBytesPerSecond || options.latencyMs
      ? new ThrottledSource(pattern, {
          clock: machine.clock,
          bandwidth: options.linkBytesPerSecond ?? Number.POSITIVE_INFINITY,
          latency: options.latencyMs ?? 0,
        })
      : pattern;
  const bitmap = LocalBitmap.inMemory({
    blockBytes: options.blockBytes ?? BLOCK_BYTES,
    imageSectors: m.diskSectors,
    imageTag: m.diskPattern,
  });
  const engine = new DeploymentEngine({
    device: machine.mediator!,
    image,
    bitmap,
    clock: machine.clock,
    fetchArena: machine.dmaArena,
    devirtualize: () => machine.devirtualize(),
  });
  engine.start();
  return {
    machine,
    engine,
    local,
    readDisk: (lba, count) => engine.readAsGuest(lba, count, (l, c) => local.read(l, c)),
    guestIdle: () => !machine.controller.busy && (!machine.host.on || machine.mediator!.guestIdle()),
    finish: async (maxMs) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`the deployment did not finish within ${maxMs} ms`)),
          maxMs,
        );
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
