import { readFile } from "node:fs/promises";
import { checkLbaPattern, fillLbaPattern } from "../block/pattern.ts";
import type { Clock } from "../vmx/clock.ts";
import type { AhciGuestDriver } from "./driver.ts";

const SECTOR = 512;

/** Latency percentiles in clock milliseconds. */
export interface LatencySummary {
  readonly min: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

/** What every workload returns. Times are on the machine's clock (virtual or real ms). */
export interface WorkloadStats {
  readonly name: string;
  /** Requests completed (successfully or not). */
  readonly ops: number;
  readonly reads: number;
  readonly writes: number;
  readonly flushes: number;
  /** Bytes moved by successful reads and writes. */
  readonly bytes: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly durationMs: number;
  /** ops per second of clock time. */
  readonly iops: number;
  /** Decimal MB (10^6 bytes) per second of clock time. */
  readonly mbPerSec: number;
  readonly latencyMs: LatencySummary;
  readonly errors: number;
  /** The first few error messages. */
  readonly errorMessages: readonly string[];
  /** Reads checked against the lba pattern, and how many did not match. */
  readonly verified: number;
  readonly mismatches: number;
}

export type Verify = "none" | "lba";

/** Collects per-request results into WorkloadStats. */
class Recorder {
  reads = 0;
  writes = 0;
  flushes = 0;
  bytesRead = 0;
  bytesWritten = 0;
  errors = 0;
  verified = 0;
  mismatches = 0;
  readonly errorMessages: string[] = [];
  #latencies: Float64Array;
  #count = 0;
  readonly start: number;

  constructor(
    readonly name: string,
    readonly clock: Clock,
    expected: number,
  ) {
    this.#latencies = new Float64Array(Math.max(16, expected));
    this.start = clock.now();
  }

  latency(ms: number): void {
    if (this.#count === this.#latencies.length) {
      const bigger = new Float64Array(this.#latencies.length * 2);
      bigger.set(this.#latencies);
      this.#latencies = bigger;
    }
    this.#latencies[this.#count++] = ms;
  }

  /** Counts an error; returns its message. */
  error(error: unknown): string {
    this.errors++;
    const message = error instanceof Error ? error.message : String(error);
    if (this.errorMessages.length < 10) this.errorMessages.push(message);
    return message;
  }

  verify(view: Uint8Array, lba: number): void {
    this.verified++;
    if (checkLbaPattern(view, lba) !== -1) this.mismatches++;
  }

  finish(): WorkloadStats {
    const durationMs = this.clock.now() - this.start;
    const ops = this.#count;
    const bytes = this.bytesRead + this.bytesWritten;
    const seconds = durationMs / 1000;
    return {
      name: this.name,
      ops,
      reads: this.reads,
      writes: this.writes,
      flushes: this.flushes,
      bytes,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      durationMs,
      iops: seconds > 0 ? ops / seconds : Number.POSITIVE_INFINITY,
      mbPerSec: seconds > 0 ? bytes / 1e6 / seconds : Number.POSITIVE_INFINITY,
      latencyMs: summarize(this.#latencies.subarray(0, ops)),
      errors: this.errors,
      errorMessages: this.errorMessages,
      verified: this.verified,
      mismatches: this.mismatches,
    };
  }
}

/** Nearest-rank percentiles. */
export function summarize(samples: Float64Array): LatencySummary {
  if (samples.length === 0) return { min: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
  const sorted = Float64Array.from(samples).sort();
  const at = (q: number): number =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    min: sorted[0]!,
    mean: sum / sorted.length,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: sorted[sorted.length - 1]!,
  };
}

/** A small seeded PRNG (mulberry32): the same seed gives the same LBAs on every run. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- the I/O primitives the workloads share ---------------------------------------------------

/** Reads nobody looks at (the data stays in guest RAM). */
function discard(_view: Uint8Array): void {}

/** One read, timed; with verify the data is checked in place (no copy). */
function doRead(
  driver: AhciGuestDriver,
  rec: Recorder,
  lba: number,
  sectors: number,
  verify: Verify,
): Promise<string | undefined> {
  const issued = rec.clock.now();
  const consume =
    verify === "lba"
      ? (view: Uint8Array, offset: number) => rec.verify(view, lba + offset / SECTOR)
      : discard;
  return driver.readWith(lba, sectors, consume).then(
    () => {
      rec.reads++;
      rec.bytesRead += sectors * SECTOR;
      rec.latency(rec.clock.now() - issued);
      return undefined;
    },
    (error: unknown) => {
      rec.reads++;
      rec.latency(rec.clock.now() - issued);
      return rec.error(error);
    },
  );
}

/** One write, timed; with pattern the lba pattern is produced in place, so later reads verify. */
function doWrite(
  driver: AhciGuestDriver,
  rec: Recorder,
  lba: number,
  sectors: number,
  pattern: boolean,
): Promise<string | undefined> {
  const issued = rec.clock.now();
  const produce = pattern
    ? (view: Uint8Array, offset: number) => fillLbaPattern(view, lba + offset / SECTOR)
    : () => {};
  return driver.writeWith(lba, sectors, produce).then(
    () => {
      rec.writes++;
      rec.bytesWritten += sectors * SECTOR;
      rec.latency(rec.clock.now() - issued);
      return undefined;
    },
    (error: unknown) => {
      rec.writes++;
      rec.latency(rec.clock.now() - issued);
      return rec.error(error);
    },
  );
}

function doFlush(driver: AhciGuestDriver, rec: Recorder): Promise<string | undefined> {
  const issued = rec.clock.now();
  return driver.flush().then(
    () => {
      rec.flushes++;
      rec.latency(rec.clock.now() - issued);
      return undefined;
    },
    (error: unknown) => {
      rec.flushes++;
      rec.latency(rec.clock.now() - issued);
      return rec.error(error);
    },
  );
}

function checkBlock(blockBytes: number): number {
  if (!Number.isSafeInteger(blockBytes) || blockBytes <= 0 || blockBytes % SECTOR !== 0) {
    throw new RangeError(`block size ${blockBytes} is not a positive multiple of ${SECTOR}`);
  }
  return blockBytes / SECTOR;
}

function checkDepth(queueDepth: number): void {
  if (!Number.isSafeInteger(queueDepth) || queueDepth < 1)
    throw new RangeError(`invalid queue depth ${queueDepth}`);
}

// ---- sequential and random --------------------------------------------------------------------

export interface SequentialOptions {
  readonly op: "read" | "write";
  readonly blockBytes: number;
  readonly totalBytes: number;
  /** Requests kept in flight (default 1). */
  readonly queueDepth?: number;
  readonly startLba?: number;
  /** "lba": reads are checked against the lba pattern, writes write it. */
  readonly verify?: Verify;
  readonly clock?: Clock;
}

/** Sequential reads or writes of blockBytes each, queueDepth at a time, from startLba. */
export async function sequential(
  driver: AhciGuestDriver,
  options: SequentialOptions,
): Promise<WorkloadStats> {
  const blockSectors = checkBlock(options.blockBytes);
  const queueDepth = options.queueDepth ?? 1;
  checkDepth(queueDepth);
  const count = Math.ceil(options.totalBytes / options.blockBytes);
  const start = options.startLba ?? 0;
  if (start + count * blockSectors > driver.sectors) {
    throw new RangeError(
      `sequential: ${count} blocks of ${options.blockBytes} bytes from LBA ${start} end beyond the disk (${driver.sectors} sectors)`,
    );
  }
  const verify = options.verify ?? "none";
  const rec = new Recorder(
    `sequential ${options.op} ${options.blockBytes}B qd${queueDepth}`,
    options.clock ?? driver.clock,
    count,
  );
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const lba = start + next++ * blockSectors;
      if (options.op === "read") await doRead(driver, rec, lba, blockSectors, verify);
      else await doWrite(driver, rec, lba, blockSectors, verify === "lba");
    }
  };
  await Promise.all(Array.from({ length: Math.min(queueDepth, count) }, worker));
  return rec.finish();
}

export interface RandomOptions {
  /** All reads or all writes; or give `mix`. */
  readonly op?: "read" | "write";
  /** Fraction of reads (0..1) in a read/write mix. */
  readonly mix?: number;
  readonly blockBytes: number;
  readonly count: number;
  readonly queueDepth?: number;
  readonly seed?: number;
  /** Sectors of the disk the offsets fall in, from LBA 0 (default: all of it). */
  readonly spanSectors?: number;
  readonly verify?: Verify;
  readonly clock?: Clock;
}

/** Block-aligned random reads/writes over the disk, from a seeded PRNG. */
export async function random(driver: AhciGuestDriver, options: RandomOptions): Promise<WorkloadStats> {
  const blockSectors = checkBlock(options.blockBytes);
  const queueDepth = options.queueDepth ?? 1;
  checkDepth(queueDepth);
  const span = options.spanSectors ?? driver.sectors;
  if (span > driver.sectors)
    throw new RangeError(`random: span ${span} is beyond the disk (${driver.sectors} sectors)`);
  const blocks = Math.floor(span / blockSectors);
  if (blocks < 1)
    throw new RangeError(`random: a ${options.blockBytes}-byte block does not fit in ${span} sectors`);
  const readFraction = options.mix ?? (options.op === "write" ? 0 : 1);
  if (!(readFraction >= 0 && readFraction <= 1))
    throw new RangeError(`random: mix ${options.mix} is not in [0, 1]`);
  const rand = mulberry32(options.seed ?? 1);
  const verify = options.verify ?? "none";
  const label = options.mix !== undefined ? `mix ${readFraction}` : (options.op ?? "read");
  const rec = new Recorder(
    `random ${label} ${options.blockBytes}B qd${queueDepth}`,
    options.clock ?? driver.clock,
    options.count,
  );
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < options.count) {
      issued++;
      const lba = Math.floor(rand() * blocks) * blockSectors;
      const isRead = readFraction === 1 || (readFraction > 0 && rand() < readFraction);
      if (isRead) await doRead(driver, rec, lba, blockSectors, verify);
      else await doWrite(driver, rec, lba, blockSectors, verify === "lba");
    }
  };
  await Promise.all(Array.from({ length: Math.min(queueDepth, options.count) }, worker));
  return rec.finish();
}

// ---- boot replay ------------------------------------------------------------------------------

/** One block request of a recorded boot (/work/shared/data/boot-blockio.jsonl). */
export interface BlockRecord {
  /** Issue time, ms since the recording started. */
  readonly t_ms: number;
  readonly op: "read" | "write" | "flush";
  readonly lba: number;
  readonly sectors: number;
  readonly phase?: string;
  readonly ncq?: boolean;
  readonly tag?: number;
  readonly ata_cmd?: string;
  readonly outstanding_at_issue?: number;
  /** Issue to completion in the recording, ms. */
  readonly lat_ms?: number;
}

/** Parses the JSON-lines trace; every line is checked, errors name the line. */
export function parseBlockTrace(text: string, source = "block trace"): BlockRecord[] {
  const records: BlockRecord[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "") continue;
    const where = `${source}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new SyntaxError(`${where}: not JSON (${(error as Error).message})`);
    }
    const r = value as Record<string, unknown>;
    if (typeof r !== "object" || r === null) throw new SyntaxError(`${where}: not an object`);
    if (typeof r.t_ms !== "number" || !Number.isFinite(r.t_ms)) throw new SyntaxError(`${where}: bad t_ms`);
    if (r.op !== "read" && r.op !== "write" && r.op !== "flush")
      throw new SyntaxError(`${where}: bad op ${String(r.op)}`);
    if (!Number.isSafeInteger(r.lba) || (r.lba as number) < 0) throw new SyntaxError(`${where}: bad lba`);
    if (!Number.isSafeInteger(r.sectors) || (r.sectors as number) < 0)
      throw new SyntaxError(`${where}: bad sectors`);
    if (r.op !== "flush" && (r.sectors as number) === 0)
      throw new SyntaxError(`${where}: a ${r.op} of 0 sectors`);
    if (r.lat_ms !== undefined && (typeof r.lat_ms !== "number" || r.lat_ms < 0)) {
      throw new SyntaxError(`${where}: bad lat_ms`);
    }
    records.push(r as unknown as BlockRecord);
  }
  return records;
}

/** Reads and parses a block trace file. */
export async function loadBlockTrace(path: string): Promise<BlockRecord[]> {
  return parseBlockTrace(await readFile(path, "utf8"), path);
}

/** One replayed request. */
export interface ReplayedRequest {
  readonly index: number;
  readonly op: BlockRecord["op"];
  readonly lba: number;
  readonly sectors: number;
  /** Clock ms from the start of the replay. */
  readonly issuedAt: number;
  readonly completedAt: number;
  readonly error?: string;
}

export interface BootReplayOptions {
  /** Multiplies the recorded gaps between issues: 1 = recorded pacing, 0 = no think time. */
  readonly thinkTimeScale?: number;
  /** Clock for pacing and timing (default: the driver's). */
  readonly clock?: Clock;
  /** "lba": every read is checked against the lba pattern (writes write it, so that holds). */
  readonly verify?: Verify;
}

export interface BootReplayStats extends WorkloadStats {
  readonly requests: readonly ReplayedRequest[];
  /** Most requests the replay had outstanding at once. */
  readonly maxOutstanding: number;
}

/**
 * Replays a recorded boot through the driver: request i is issued at its recorded offset
 * (scaled), and only after every earlier request that had completed, in the recording, before
 * i was issued; requests that overlapped in the recording overlap here too. Writes carry the
 * lba pattern. Every record is replayed; a request beyond the disk is an error before any I/O.
 */
export async function bootReplay(
  driver: AhciGuestDriver,
  records: readonly BlockRecord[],
  options: BootReplayOptions = {},
): Promise<BootReplayStats> {
  const scale = options.thinkTimeScale ?? 1;
  if (!(scale >= 0) || !Number.isFinite(scale))
    throw new RangeError(`thinkTimeScale ${scale} is not a finite number >= 0`);
  const clock = options.clock ?? driver.clock;
  const verify = options.verify ?? "none";
  records.forEach((r, i) => {
    if (r.op !== "flush" && r.lba + r.sectors > driver.sectors) {
      throw new RangeError(
        `boot trace request #${i} (${r.op} of ${r.sectors} sectors at LBA ${r.lba}) ends beyond the disk ` +
          `(${driver.sectors} sectors)`,
      );
    }
  });
  const rec = new Recorder("boot replay", clock, records.length);
  const requests: ReplayedRequest[] = new Array(records.length);
  const t0 = records.length > 0 ? records[0]!.t_ms : 0;
  const start = rec.start;
  /** Requests not yet waited for, by recorded completion time. */
  const open: { end: number; done: Promise<void> }[] = [];
  let outstanding = 0;
  let maxOutstanding = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    // Keep the recorded concurrency: wait for what had finished by now in the recording.
    const ready = open.filter((o) => o.end <= r.t_ms);
    if (ready.length > 0) {
      for (const o of ready) open.splice(open.indexOf(o), 1);
      await Promise.all(ready.map((o) => o.done));
    }
    const due = start + (r.t_ms - t0) * scale;
    const wait = due - clock.now();
    if (wait > 0) await clock.sleep(wait);
    const issuedAt = clock.now() - start;
    outstanding++;
    maxOutstanding = Math.max(maxOutstanding, outstanding);
    let io: Promise<string | undefined>;
    if (r.op === "read") io = doRead(driver, rec, r.lba, r.sectors, verify);
    else if (r.op === "write") io = doWrite(driver, rec, r.lba, r.sectors, true);
    else io = doFlush(driver, rec);
    const done = io.then((failed) => {
      outstanding--;
      requests[i] = {
        index: i,
        op: r.op,
        lba: r.lba,
        sectors: r.sectors,
        issuedAt,
        completedAt: clock.now() - start,
        ...(failed !== undefined ? { error: failed } : {}),
      };
    });
    // Without a recorded latency, assume it finished before the next request.
    open.push({ end: r.t_ms + (r.lat_ms ?? 0), done });
  }
  await Promise.all(open.map((o) => o.done));
  return { ...rec.finish(), requests, maxOutstanding };
}
