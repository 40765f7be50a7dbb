import { fillLbaPattern, PatternSource } from "../../runtime/block/pattern.ts";
import { SparseBackend } from "../../runtime/block/sparse.ts";
import { ThrottledSource } from "../../runtime/block/throttle.ts";
import type { BlockSource } from "../../runtime/block/types.ts";
import { LocalBitmap } from "../../runtime/deploy/bitmap.ts";
import { DeploymentEngine, type EngineEvent } from "../../runtime/deploy/engine.ts";
import { mulberry32 } from "../../runtime/guest/workloads.ts";
import { Machine } from "../../runtime/machine.ts";
import type { Clock } from "../../runtime/vmx/clock.ts";

export const SECTOR = 512;

/** What the disk must hold: the lba pattern of the image, with the guest's last writes over it. */
export class DiskModel {
  readonly written = new Map<number, Uint8Array>();

  constructor(readonly sectors: number) {}

  expected(lba: number, count: number): Uint8Array {
    const out = new Uint8Array(count * SECTOR);
    fillLbaPattern(out, lba);
    for (let i = 0; i < count; i++) {
      const sector = this.written.get(lba + i);
      if (sector) out.set(sector, i * SECTOR);
    }
    return out;
  }

  write(lba: number, data: Uint8Array): void {
    for (let i = 0; i < data.length / SECTOR; i++) {
      this.written.set(lba + i, data.slice(i * SECTOR, (i + 1) * SECTOR));
    }
  }
}

/** Deterministic pseudo-random bytes (never all zeros, never the lba pattern). */
export function randomData(seed: number, bytes: number): Uint8Array {
  const next = mulberry32(seed);
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 4) {
    const word = Math.floor(next() * 2 ** 32);
    out[i] = word & 0xff;
    out[i + 1] = (word >>> 8) & 0xff;
    out[i + 2] = (word >>> 16) & 0xff;
    out[i + 3] = (word >>> 24) & 0xff;
  }
  return out;
}

/** null when equal, else where and what differs (sector, and whose lba-pattern data it holds). */
export function describeMismatch(actual: Uint8Array, expected: Uint8Array, firstLba: number): string | null {
  if (actual.length !== expected.length) return `length ${actual.length}, expected ${expected.length}`;
  if (Buffer.compare(actual, expected) === 0) return null;
  let i = 0;
  while (actual[i] === expected[i]) i++;
  const sector = Math.floor(i / SECTOR);
  const view = Buffer.from(actual.buffer, actual.byteOffset + sector * SECTOR, 8);
  const holds = view.readBigUInt64LE();
  let bad = 0;
  for (let s = 0; s < actual.length / SECTOR; s++) {
    const a = actual.subarray(s * SECTOR, (s + 1) * SECTOR);
    const e = expected.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (Buffer.compare(a, e) !== 0) bad++;
  }
  return `sector ${firstLba + sector} (byte ${i % SECTOR}) differs; its first word is 0x${holds.toString(16)}; ${bad} bad sectors in all`;
}

export interface StreamingSetup {
  readonly machine: Machine;
  readonly engine: DeploymentEngine;
  readonly local: SparseBackend;
  readonly image: BlockSource;
  readonly events: EngineEvent[];
  /** host.stats.exits at the moment the engine reported de-virtualization. */
  exitsAtDevirt: number | null;
}

export interface StreamingParams {
  readonly sectors: number;
  readonly clock: Clock;
  readonly blockBytes: number;
  /** Image link in bytes per second (undefined: unthrottled). */
  readonly linkBytesPerSecond?: number;
  readonly latencyMs?: number;
  readonly backgroundRate?: number;
  readonly fullRateWhenIdleMs?: number;
  readonly fetchDepth?: number;
  readonly fetchBlocks?: number;
  readonly readAhead?: number;
  readonly flushEveryBytes?: number;
  readonly maxCachedBytes?: number;
  readonly ramMiB?: number;
  readonly deviceLatencyMs?: number;
  /** VMM DMA memory for the engine's fetch buffers (the mediator writes them in place); default none. */
  readonly dmaBytes?: number;
}

/** A mediated machine over an empty local disk, streaming an lba-pattern image through the engine. */
export function streamingSetup(p: StreamingParams): StreamingSetup {
  const pattern = new PatternSource(p.sectors, "lba", "lba image");
  const local = new SparseBackend(p.sectors, 128, "empty local disk");
  const machine = new Machine({
    disks: [local],
    mediated: true,
    clock: p.clock,
    ramMiB: p.ramMiB ?? 16,
    latencyMs: p.deviceLatencyMs ?? 0,
    dmaBytes: p.dmaBytes ?? 0,
  });
  const image =
    p.linkBytesPerSecond !== undefined || p.latencyMs
      ? new ThrottledSource(pattern, {
          clock: p.clock,
          bandwidth: p.linkBytesPerSecond ?? Number.POSITIVE_INFINITY,
          latency: p.latencyMs ?? 0,
        })
      : pattern;
  const bitmap = LocalBitmap.inMemory({ blockBytes: p.blockBytes, imageSectors: p.sectors, imageTag: "lba" });
  const events: EngineEvent[] = [];
  const setup: StreamingSetup = {
    machine,
    local,
    image,
    events,
    exitsAtDevirt: null,
    engine: undefined as unknown as DeploymentEngine,
  };
  const engine = new DeploymentEngine({
    device: machine.mediator!,
    image,
    bitmap,
    clock: p.clock,
    backgroundRate: p.backgroundRate,
    fullRateWhenIdleMs: p.fullRateWhenIdleMs,
    fetchDepth: p.fetchDepth,
    fetchBlocks: p.fetchBlocks,
    readAhead: p.readAhead,
    flushEveryBytes: p.flushEveryBytes,
    maxCachedBytes: p.maxCachedBytes,
    fetchArena: machine.dmaArena,
    devirtualize: () => machine.devirtualize(),
    onEvent: (event) => {
      events.push(event);
      if (event.type === "devirtualized") setup.exitsAtDevirt = machine.host.stats.exits;
    },
  });
  (setup as { engine: DeploymentEngine }).engine = engine;
  return setup;
}

/** Rejects after `ms` of real time: a hang fails the test instead of stalling the run. */
export function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms (real time)`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
