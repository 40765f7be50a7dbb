import { OverlayBackend } from "../runtime/block/overlay.ts";
import { PatternSource } from "../runtime/block/pattern.ts";
import { SparseBackend } from "../runtime/block/sparse.ts";
import { ThrottledSource } from "../runtime/block/throttle.ts";
import { LocalBitmap } from "../runtime/deploy/bitmap.ts";
import { bootWorkload } from "../runtime/deploy/boot-workload.ts";
import { DEFAULT_FETCH_ARENA_BYTES, DeploymentEngine } from "../runtime/deploy/engine.ts";
import { Machine } from "../runtime/machine.ts";
import type { ReplayEnvironment } from "../runtime/replay/replay.ts";
import type { Clock } from "../runtime/vmx/clock.ts";
import { VirtualClock } from "../runtime/vmx/clock.ts";

/**
 * One deployment scenario in memory: a pattern image behind a throttled link, an empty sparse
 * local disk, the mediated machine, the engine and (optionally) the recorded boot as the guest.
 * On a VirtualClock a 32 GiB image over 1 Gbit/s runs in seconds through the same code paths.
 */
export interface ScenarioOptions {
  readonly clock: Clock;
  readonly imageSectors: number;
  /** "zero" keeps a paper-scale run cheap (the sparse disk stores no zeros); "lba" is checkable. */
  readonly pattern: "zero" | "lba";
  readonly linkBytesPerSecond: number;
  readonly latencyMs: number;
  readonly blockBytes?: number;
  /** Bytes per second for the background copy; 0 turns it off (copy on read only). */
  readonly backgroundRate?: number;
  readonly workload: "boot" | "none";
  readonly thinkTimeScale?: number;
  /** Stop as soon as the guest's workload has finished (the copy need not complete). */
  readonly stopAtOsReady?: boolean;
  /** Sample the bytes local every this many clock ms (for the timeline chart). */
  readonly sampleEveryMs?: number;
}

export interface ScenarioResult {
  readonly osReadyMs: number | null;
  readonly doneMs: number | null;
  readonly devirtualizedMs: number | null;
  readonly exitsTotal: number;
  readonly exitsAfterDevirt: number;
  readonly bytesFetched: number;
  readonly bytesRedirected: number;
  readonly bytesBackground: number;
  readonly guestCommands: number;
  readonly timeline: readonly { readonly t: number; readonly localBytes: number }[];
  readonly guestIo: readonly { readonly t: number; readonly op: string }[];
  readonly wallMs: number;
}

export async function runScenario(o: ScenarioOptions): Promise<ScenarioResult> {
  const wall = performance.now();
  const run = async (): Promise<ScenarioResult> => {
    const { clock } = o;
    const image = new ThrottledSource(new PatternSource(o.imageSectors, o.pattern), {
      clock,
      bandwidth: o.linkBytesPerSecond,
      latency: o.latencyMs,
    });
    const local = new SparseBackend(o.imageSectors, 128, "local disk");
    const machine = new Machine({
      disks: [local],
      clock,
      mediated: true,
      dmaBytes: DEFAULT_FETCH_ARENA_BYTES,
    });
    const bitmap = LocalBitmap.inMemory({
      blockBytes: o.blockBytes ?? 65536,
      imageSectors: o.imageSectors,
      imageTag: o.pattern,
    });
    const engine = new DeploymentEngine({
      device: machine.mediator!,
      image,
      bitmap,
      clock,
      backgroundRate: o.backgroundRate,
      fetchArena: machine.dmaArena,
      devirtualize: () => machine.devirtualize(),
    });
    const start = clock.now();
    const timeline: { t: number; localBytes: number }[] = [];
    let sampling = o.sampleEveryMs !== undefined;
    const sampler = (async () => {
      while (sampling) {
        timeline.push({ t: clock.now() - start, localBytes: engine.localBytes });
        await clock.sleep(o.sampleEveryMs!);
      }
    })();
    engine.start();
    let osReady: number | null = null;
    let guestIo: { t: number; op: string }[] = [];
    if (o.workload === "boot") {
      const env: ReplayEnvironment = {
        machine,
        readDisk: (lba, count) => engine.readAsGuest(lba, count, (l, c) => local.read(l, c)),
        guestIdle: () => true,
        finish: () => engine.finished(),
        close: async () => {},
      };
      const workload = bootWorkload({ thinkTimeScale: o.thinkTimeScale ?? 1, collect: (r) => (guestIo = r) });
      await workload.run(env);
      osReady = clock.now() - start;
    }
    if (o.stopAtOsReady) engine.stop();
    else await engine.finished();
    sampling = false;
    timeline.push({ t: clock.now() - start, localBytes: engine.localBytes });
    await sampler;
    await machine.controller.idle();
    const s = engine.stats;
    return {
      osReadyMs: osReady,
      doneMs: s.completedAtMs === null ? null : s.completedAtMs - start,
      devirtualizedMs: s.devirtualizedAtMs === null ? null : s.devirtualizedAtMs - start,
      exitsTotal: machine.host.stats.exits,
      exitsAfterDevirt: machine.host.stats.exitsAfterOff,
      bytesFetched: s.bytesFetched,
      bytesRedirected: s.bytesRedirected,
      bytesBackground: s.bytesBackground,
      guestCommands: machine.mediator!.counters.guestCommands,
      timeline,
      guestIo,
      wallMs: 0,
    };
  };
  const result = o.clock instanceof VirtualClock ? await o.clock.run(run) : await run();
  return { ...result, wallMs: performance.now() - wall };
}

/** The recorded boot on a bare machine whose disk already holds the image: the baseline boot time. */
export function bareBootMs(clock: Clock, imageSectors: number, thinkTimeScale = 1): Promise<number> {
  return localBootMs(clock, imageSectors, thinkTimeScale, false);
}

/**
 * The recorded boot with the generated mediator trapping every register access and passing every
 * command on, the image already local: what mediation alone costs the boot.
 */
export function passthroughBootMs(clock: Clock, imageSectors: number, thinkTimeScale = 1): Promise<number> {
  return localBootMs(clock, imageSectors, thinkTimeScale, true);
}

async function localBootMs(
  clock: Clock,
  imageSectors: number,
  thinkTimeScale: number,
  mediated: boolean,
): Promise<number> {
  const run = async () => {
    const disk = new OverlayBackend(new PatternSource(imageSectors, "zero"));
    const machine = new Machine({ disks: [disk], clock, mediated });
    // Bare: no VMM at all (a bare Machine's host would still take every device interrupt as an exit).
    if (!mediated) machine.host.turnOff();
    const start = clock.now();
    await bootWorkload({ thinkTimeScale }).run({
      machine,
      readDisk: (lba, count) => disk.read(lba, count),
      guestIdle: () => true,
      finish: async () => {},
      close: async () => {},
    });
    const ms = clock.now() - start;
    await machine.controller.idle();
    return ms;
  };
  return clock instanceof VirtualClock ? clock.run(run) : run();
}
