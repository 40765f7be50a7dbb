/**
 * Differential tests of streaming deployment: the same random guest workload runs through the
 * guest driver on a bare machine (the image already local, as a writable overlay) and on a
 * mediated machine whose local disk starts empty while the engine streams the image in, with a
 * random block size, link speed and background rate, so the background copy races the guest.
 *
 *  - every guest read returns the image's data or the guest's last write (an independent model);
 *  - after engine.finished() the local disk holds exactly image + guest writes;
 *  - no VM exit after de-virtualization, and none on later guest I/O;
 *  - every register value, interrupt edge and received-FIS byte the guest observes is the same in
 *    both modes at the same points of a sequential workload.
 */
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { OverlayBackend } from "../../runtime/block/overlay.ts";
import { PatternSource } from "../../runtime/block/pattern.ts";
import { AhciGuestDriver } from "../../runtime/guest/driver.ts";
import { Machine } from "../../runtime/machine.ts";
import { type Clock, VirtualClock } from "../../runtime/vmx/clock.ts";
import {
  DiskModel,
  describeMismatch,
  randomData,
  SECTOR,
  type StreamingSetup,
  streamingSetup,
  withTimeout,
} from "./helpers.ts";

/** Replay a failure: DIFF_SEED and DIFF_PATH as fast-check printed them. */
const REPLAY =
  process.env.DIFF_SEED === undefined
    ? {}
    : { seed: Number(process.env.DIFF_SEED), path: process.env.DIFF_PATH, endOnFailure: true };

// ---- workloads ----------------------------------------------------------------------------------

type Op =
  | { readonly kind: "read"; readonly lba: number; readonly sectors: number }
  | { readonly kind: "write"; readonly lba: number; readonly sectors: number; readonly seed: number }
  | { readonly kind: "flush" }
  /** A read that runs past the end of the disk: both modes must fail it (and recover). */
  | { readonly kind: "beyond"; readonly sectors: number };

interface Batch {
  /** Issued together (several in flight with NCQ), awaited together. */
  readonly ops: readonly Op[];
  /** The guest idles this long (clock ms) after the batch: room for the background copy. */
  readonly thinkMs: number;
}

/** Positions in [0, 1) scaled to the disk; hot spots make overlaps (and block-boundary straddles) common. */
const position = fc.oneof(
  { weight: 2, arbitrary: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom(0.1, 0.25, 0.5, 0.75, 0.999), fc.double({ min: -0.01, max: 0.01, noNaN: true }))
      .map(([hot, jitter]) => Math.min(0.9999, Math.max(0, hot + jitter))),
  },
);
const sectorCount = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 16 }) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 600 }) },
  // Larger than one bounce buffer (512 sectors): the driver splits them.
  { weight: 1, arbitrary: fc.integer({ min: 513, max: 1500 }) },
);

type RawOp =
  | { kind: "read"; at: number; sectors: number }
  | { kind: "write"; at: number; sectors: number; seed: number }
  | { kind: "flush" }
  | { kind: "beyond"; sectors: number };

const rawOp: fc.Arbitrary<RawOp> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ kind: fc.constant("read" as const), at: position, sectors: sectorCount }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("write" as const),
      at: position,
      sectors: sectorCount,
      seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: "flush" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("beyond" as const), sectors: fc.integer({ min: 2, max: 64 }) }),
  },
);

const rawBatches = fc.array(
  fc.record({
    ops: fc.array(rawOp, { minLength: 1, maxLength: 8 }),
    thinkMs: fc.oneof(
      { weight: 3, arbitrary: fc.constant(0) },
      { weight: 1, arbitrary: fc.integer({ min: 1, max: 400 }) },
    ),
  }),
  { minLength: 1, maxLength: 10 },
);

function overlaps(a: { lba: number; sectors: number }, b: { lba: number; sectors: number }): boolean {
  return a.lba < b.lba + b.sectors && b.lba < a.lba + a.sectors;
}

/**
 * Places raw ops on a disk of `sectors` sectors. Within a batch an op that overlaps a write of the
 * same batch (or a write that overlaps anything of it) is dropped: their order on the device is
 * not defined, so no model could say what a read returns. Across batches overlaps abound.
 */
function place(raw: readonly { ops: readonly RawOp[]; thinkMs: number }[], sectors: number): Batch[] {
  return raw.map((batch) => {
    const kept: Op[] = [];
    const ranges: { lba: number; sectors: number; write: boolean }[] = [];
    for (const op of batch.ops) {
      if (op.kind === "flush") {
        kept.push(op);
        continue;
      }
      if (op.kind === "beyond") {
        kept.push({ kind: "beyond", sectors: op.sectors });
        continue;
      }
      const count = Math.min(op.sectors, sectors);
      const lba = Math.min(sectors - count, Math.floor(op.at * sectors));
      const range = { lba, sectors: count, write: op.kind === "write" };
      if (ranges.some((r) => (r.write || range.write) && overlaps(r, range))) continue;
      ranges.push(range);
      kept.push(op.kind === "read" ? { kind: "read", lba, sectors: count } : { ...op, lba, sectors: count });
    }
    return { ops: kept, thinkMs: batch.thinkMs };
  });
}

/**
 * Runs the batches through the driver, checking every read against the model and updating the
 * model with every write. Throws on the first wrong result. `afterBatch` runs between batches.
 */
async function runWorkload(
  driver: AhciGuestDriver,
  clock: Clock,
  batches: readonly Batch[],
  model: DiskModel,
  mode: string,
  afterBatch?: (index: number) => void,
): Promise<void> {
  for (const [index, batch] of batches.entries()) {
    const results = await Promise.allSettled(
      batch.ops.map(async (op): Promise<void> => {
        switch (op.kind) {
          case "read": {
            const data = await driver.read(op.lba, op.sectors);
            const bad = describeMismatch(data, model.expected(op.lba, op.sectors), op.lba);
            if (bad) throw new Error(`${mode}: batch ${index}: read ${op.lba}+${op.sectors}: ${bad}`);
            return;
          }
          case "write": {
            const data = randomData(op.seed, op.sectors * SECTOR);
            await driver.write(op.lba, data);
            model.write(op.lba, data);
            return;
          }
          case "flush":
            await driver.flush();
            return;
          case "beyond": {
            const lba = model.sectors - Math.floor(op.sectors / 2);
            const outcome = await driver.read(lba, op.sectors).then(
              () => "completed",
              (error: unknown) => (error instanceof Error ? error.message : String(error)),
            );
            if (!/beyond the disk/.test(outcome)) {
              throw new Error(
                `${mode}: batch ${index}: a read of ${lba}+${op.sectors} past the disk's end gave: ${outcome}`,
              );
            }
            return;
          }
        }
      }),
    );
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    afterBatch?.(index);
    if (batch.thinkMs > 0) await clock.sleep(batch.thinkMs);
  }
}

// ---- streaming parameters -------------------------------------------------------------------------

interface Params {
  readonly sectors: number;
  readonly blockBytes: number;
  readonly linkBytesPerSecond: number | undefined;
  readonly latencyMs: number;
  readonly backgroundRate: number | undefined;
  readonly fetchDepth: number;
  readonly fetchBlocks: number;
  readonly readAhead: number;
  readonly flushEveryBytes: number | undefined;
  readonly maxCachedBytes: number | undefined;
  readonly ncq: boolean;
  readonly queueDepth: number;
  readonly engineFirst: boolean;
  readonly deviceLatencyMs: number;
  /** VMM DMA memory for fetch buffers (0: none; small: it runs out and heap buffers serve too). */
  readonly dmaBytes: number;
}

const params: fc.Arbitrary<Params> = fc.record({
  // 2..10 MiB, not always a multiple of the block size (a short last block).
  sectors: fc.integer({ min: 4096, max: 20480 }),
  blockBytes: fc.integer({ min: 1, max: 64 }).map((n) => n * 4096),
  linkBytesPerSecond: fc.option(
    fc.integer({ min: 1, max: 2000 }).map((mbps) => (mbps * 1e6) / 8),
    { nil: undefined, freq: 4 },
  ),
  latencyMs: fc.integer({ min: 0, max: 5 }),
  backgroundRate: fc.option(
    fc.integer({ min: 1, max: 100 }).map((mib) => mib * 1024 * 1024),
    { nil: undefined, freq: 2 },
  ),
  fetchDepth: fc.integer({ min: 1, max: 8 }),
  fetchBlocks: fc.integer({ min: 1, max: 16 }),
  readAhead: fc.integer({ min: 0, max: 16 }),
  flushEveryBytes: fc.option(
    fc.integer({ min: 1, max: 64 }).map((n) => n * 64 * 1024),
    { nil: undefined },
  ),
  maxCachedBytes: fc.option(
    fc.integer({ min: 1, max: 32 }).map((n) => n * 256 * 1024),
    { nil: undefined },
  ),
  ncq: fc.boolean(),
  queueDepth: fc.integer({ min: 1, max: 32 }),
  engineFirst: fc.boolean(),
  deviceLatencyMs: fc.constantFrom(0, 0, 1),
  dmaBytes: fc.constantFrom(0, 1024 * 1024, 64 * 1024 * 1024),
});

function openStreaming(p: Params, clock: Clock): StreamingSetup {
  return streamingSetup({
    sectors: p.sectors,
    clock,
    blockBytes: p.blockBytes,
    linkBytesPerSecond: p.linkBytesPerSecond,
    latencyMs: p.latencyMs,
    backgroundRate: p.backgroundRate,
    fetchDepth: p.fetchDepth,
    fetchBlocks: p.fetchBlocks,
    readAhead: p.readAhead,
    flushEveryBytes: p.flushEveryBytes,
    maxCachedBytes: p.maxCachedBytes,
    deviceLatencyMs: p.deviceLatencyMs,
    dmaBytes: p.dmaBytes,
  });
}

function bareMachine(p: Params, clock: Clock): Machine {
  const disk = new OverlayBackend(new PatternSource(p.sectors, "lba", "lba image"));
  return new Machine({ disks: [disk], clock, ramMiB: 16, latencyMs: p.deviceLatencyMs });
}

/** When the copy finished relative to the guest's workload, over every run (both must occur). */
const devirtualized = { midWorkload: 0, afterWorkload: 0 };

/** One full differential run; throws with a description on the first violated invariant. */
async function differentialRun(p: Params, raw: Parameters<typeof place>[0]): Promise<void> {
  const batches = place(raw, p.sectors);
  const driverOptions = { ncq: p.ncq, queueDepth: p.queueDepth };

  // (a) bare metal: the image is local (a writable overlay of the pattern).
  const bareClock = new VirtualClock();
  const bare = bareMachine(p, bareClock);
  const bareDriver = await AhciGuestDriver.open(bare, driverOptions);
  const bareModel = new DiskModel(p.sectors);
  await runWorkload(bareDriver, bareClock, batches, bareModel, "bare");

  // (b) streaming: empty local disk, the engine fetching the image over a (maybe slow) link.
  const clock = new VirtualClock();
  const s = openStreaming(p, clock);
  if (p.engineFirst) s.engine.start();
  const driver = await AhciGuestDriver.open(s.machine, driverOptions);
  if (!p.engineFirst) s.engine.start();
  const model = new DiskModel(p.sectors);
  let doneMid = false;
  await runWorkload(driver, clock, batches, model, "streaming", () => {
    if (s.engine.isDevirtualized) doneMid = true;
    if (s.engine.error) throw s.engine.error;
  });
  await withTimeout(s.engine.finished(), 6_000, "engine.finished()");
  if (doneMid) devirtualized.midWorkload++;
  else devirtualized.afterWorkload++;

  // The local disk itself, not the engine's view, holds image + the guest's writes.
  await s.machine.controller.idle();
  const disk = await s.local.read(0, p.sectors);
  const bad = describeMismatch(disk, model.expected(0, p.sectors), 0);
  if (bad) throw new Error(`local disk after finished(): ${bad}`);
  // The same writes were made in both modes.
  expect([...model.written.keys()].sort((a, b) => a - b)).toEqual(
    [...bareModel.written.keys()].sort((a, b) => a - b),
  );

  // De-virtualized: no exit since, none now, and the guest still reads and writes correctly.
  const host = s.machine.host;
  expect(host.on).toBe(false);
  expect(host.stats.exitsAfterOff).toBe(0);
  expect(s.exitsAtDevirt).not.toBeNull();
  expect(host.stats.exits).toBe(s.exitsAtDevirt);
  const exits = host.stats.exits;
  const after: Batch[] = place(
    [
      {
        ops: [
          { kind: "write", at: 0.3, sectors: 24, seed: 99 },
          { kind: "read", at: 0.6, sectors: 700 },
          { kind: "flush" },
        ],
        thinkMs: 0,
      },
      { ops: [{ kind: "read", at: 0.3, sectors: 24 }], thinkMs: 0 },
    ],
    p.sectors,
  );
  await runWorkload(driver, clock, after, model, "after de-virtualization");
  expect(host.stats.exits).toBe(exits);
  expect(host.stats.exitsAfterOff).toBe(0);
  await driver.close();
  await bareDriver.close();
}

// ---- the tests ------------------------------------------------------------------------------------

describe("streaming deployment against bare metal (differential)", () => {
  afterAll(() => {
    // Visible in the report: how de-virtualization timing was spread over the random runs.
    console.info(
      `de-virtualized mid-workload in ${devirtualized.midWorkload} runs, after in ${devirtualized.afterWorkload}`,
    );
  });

  it("random workloads: same reads as the model in both modes, image + writes on disk, no exits after de-virtualization", async () => {
    await fc.assert(
      fc.asyncProperty(params, rawBatches, async (p, raw) => {
        await withTimeout(differentialRun(p, raw), 10_000, "differential run");
      }),
      { numRuns: 60, interruptAfterTimeLimit: 30_000, markInterruptAsFailure: false, ...REPLAY },
    );
  }, 60_000);

  it("a fast link finishes the copy while the guest idles mid-workload; later guest I/O makes no exits", async () => {
    const p: Params = {
      sectors: 8192,
      blockBytes: 64 * 1024,
      linkBytesPerSecond: 1e9,
      latencyMs: 1,
      backgroundRate: undefined,
      fetchDepth: 8,
      fetchBlocks: 16,
      readAhead: 16,
      flushEveryBytes: undefined,
      maxCachedBytes: undefined,
      ncq: true,
      queueDepth: 32,
      engineFirst: true,
      deviceLatencyMs: 0,
      dmaBytes: 0,
    };
    const clock = new VirtualClock();
    const s = openStreaming(p, clock);
    s.engine.start();
    const driver = await AhciGuestDriver.open(s.machine);
    const model = new DiskModel(p.sectors);
    const first = place([{ ops: [{ kind: "read", at: 0.9, sectors: 64 }], thinkMs: 1000 }], p.sectors);
    await runWorkload(driver, clock, first, model, "fast link");
    // 4 MiB over 1 GB/s: done long before the guest's second of thinking is over.
    expect(s.engine.isDevirtualized).toBe(true);
    expect(s.engine.stats.redirectedReads).toBeGreaterThanOrEqual(1);
    const exits = s.machine.host.stats.exits;
    expect(exits).toBe(s.exitsAtDevirt);
    const rest = place(
      [
        {
          ops: [
            { kind: "write", at: 0.5, sectors: 100, seed: 5 },
            { kind: "read", at: 0.1, sectors: 300 },
            { kind: "read", at: 0.7, sectors: 8 },
          ],
          thinkMs: 0,
        },
        { ops: [{ kind: "flush" }, { kind: "read", at: 0.5, sectors: 100 }], thinkMs: 0 },
      ],
      p.sectors,
    );
    await runWorkload(driver, clock, rest, model, "after de-virtualization");
    expect(s.machine.host.stats.exits).toBe(exits);
    expect(s.machine.host.stats.exitsAfterOff).toBe(0);
    const disk = await s.local.read(0, p.sectors);
    expect(describeMismatch(disk, model.expected(0, p.sectors), 0)).toBeNull();
    await driver.close();
  });

  it("a slow link is still copying when the workload ends; de-virtualization follows, image + writes on disk", async () => {
    const p: Params = {
      sectors: 16384,
      blockBytes: 128 * 1024,
      linkBytesPerSecond: 1e6, // 8 MiB at 1 MB/s: 8 s of virtual time
      latencyMs: 2,
      backgroundRate: undefined,
      fetchDepth: 4,
      fetchBlocks: 4,
      readAhead: 4,
      flushEveryBytes: 512 * 1024,
      maxCachedBytes: undefined,
      ncq: true,
      queueDepth: 8,
      engineFirst: false,
      deviceLatencyMs: 0,
      dmaBytes: 0,
    };
    const clock = new VirtualClock();
    const s = openStreaming(p, clock);
    const driver = await AhciGuestDriver.open(s.machine);
    s.engine.start();
    const model = new DiskModel(p.sectors);
    const batches = place(
      [
        {
          ops: [
            { kind: "read", at: 0.8, sectors: 200 },
            { kind: "write", at: 0.3, sectors: 300, seed: 7 },
            { kind: "read", at: 0.55, sectors: 16 },
          ],
          thinkMs: 100,
        },
        {
          ops: [
            { kind: "read", at: 0.3, sectors: 400 },
            { kind: "flush" },
            { kind: "write", at: 0.9, sectors: 3, seed: 8 },
          ],
          thinkMs: 0,
        },
      ],
      p.sectors,
    );
    await runWorkload(driver, clock, batches, model, "slow link");
    expect(s.engine.isDevirtualized).toBe(false);
    expect(s.machine.host.on).toBe(true);
    await withTimeout(s.engine.finished(), 20_000, "engine.finished()");
    expect(s.engine.stats.devirtualizedAtMs).toBeGreaterThan(1000);
    expect(s.machine.host.stats.exitsAfterOff).toBe(0);
    const disk = await s.local.read(0, p.sectors);
    expect(describeMismatch(disk, model.expected(0, p.sectors), 0)).toBeNull();
    const exits = s.machine.host.stats.exits;
    await runWorkload(
      driver,
      clock,
      place([{ ops: [{ kind: "read", at: 0.3, sectors: 300 }], thinkMs: 0 }], p.sectors),
      model,
      "after",
    );
    expect(s.machine.host.stats.exits).toBe(exits);
    await driver.close();
  });

  it("a guest write during the background copy's rate-limit pause is not overwritten by image data", async () => {
    // Found by the random workloads: with a finite background rate the engine picks the next run
    // of blocks, sleeps out the rate limit, then fetches that run without looking again; a block
    // the guest wrote meanwhile goes back to Fetching and its image data lands over the guest's.
    const clock = new VirtualClock();
    const s = streamingSetup({
      sectors: 4096,
      clock,
      blockBytes: 64 * 1024,
      backgroundRate: 1024 * 1024,
      fetchDepth: 1,
      fetchBlocks: 4,
      readAhead: 0,
    });
    s.engine.start();
    const driver = await AhciGuestDriver.open(s.machine);
    const model = new DiskModel(4096);
    // Blocks 0-3 are on their way; blocks 4-7 wait out the rate limit (256 KiB at 1 MiB/s).
    const data = randomData(1, SECTOR);
    await driver.write(600, data); // inside block 4, a partial block: the image lands first
    model.write(600, data);
    expect(describeMismatch(await driver.read(600, 1), data, 600)).toBeNull();
    await withTimeout(s.engine.finished(), 20_000, "engine.finished()");
    // The guest's sector, read back by the guest after de-virtualization and on the disk itself.
    expect(
      describeMismatch(await driver.read(600, 1), data, 600),
      "guest read after de-virtualization",
    ).toBeNull();
    expect(describeMismatch(await s.local.read(0, 4096), model.expected(0, 4096), 0)).toBeNull();
    expect(s.engine.stats.bytesFetched, "no block fetched twice").toBe(4096 * SECTOR);
    await driver.close();
  });

  it("after a short workload at an odd virtual time the copy still finishes (no wait too small to advance the clock)", async () => {
    // Found by the random workloads: the engine waits `guestQuietMs - quietFor` for a quiet guest;
    // at a virtual time like 10.07204678362573 that difference is ~1e-15 ms, which the clock
    // adds to `now` without changing it, so the writer and the background loop re-arm zero-progress
    // timers for ever (hundreds of thousands pending) and virtual time never moves again.
    const p: Params = {
      sectors: 4096,
      blockBytes: 4096,
      linkBytesPerSecond: 85_500_000,
      latencyMs: 0,
      backgroundRate: undefined,
      fetchDepth: 7,
      fetchBlocks: 12,
      readAhead: 0,
      flushEveryBytes: 3_866_624,
      maxCachedBytes: 4_456_448,
      ncq: true,
      queueDepth: 2,
      engineFirst: false,
      deviceLatencyMs: 0,
      dmaBytes: 0,
    };
    await withTimeout(
      differentialRun(p, [
        {
          ops: [
            { kind: "write", at: 0, sectors: 13, seed: 1778831055 },
            { kind: "read", at: 0.999, sectors: 1 },
          ],
          thinkMs: 0,
        },
      ]),
      10_000,
      "differential run",
    );
  });
});
