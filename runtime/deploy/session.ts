import { stat } from "node:fs/promises";
import { FileBackend } from "../block/file.ts";
import { ThrottledSource } from "../block/throttle.ts";
import { BlockError, type BlockSource, SECTOR_SIZE } from "../block/types.ts";
import { Machine } from "../machine.ts";
import type { ReplayEnvironment } from "../replay/replay.ts";
import { type OpenSourceOptions, openSource } from "../sources/open.ts";
import type { SourceEvent } from "../sources/options.ts";
import type { Clock } from "../vmx/clock.ts";
import { LocalBitmap } from "./bitmap.ts";
import { DEFAULT_FETCH_ARENA_BYTES, DeploymentEngine, type EngineEvent } from "./engine.ts";

/** A guest run during the deployment: it gets the machine and resolves when its job is done. */
export interface Workload {
  readonly name: string;
  run(env: ReplayEnvironment): Promise<WorkloadResult>;
  /**
   * Resolves with the clock's time (`clock.now()`) when the guest OS is ready, for a workload that
   * goes on after that (a real guest that still shuts down). Without it, the OS is ready when `run`
   * resolves.
   */
  readonly ready?: Promise<number>;
}

export interface WorkloadResult {
  readonly reads: number;
  readonly writes: number;
  /** Sectors the guest wrote, with their last content, for --verify. */
  readonly written: ReadonlyMap<number, Uint8Array>;
  readonly errors: readonly string[];
}

export interface DeployOptions {
  readonly image: string;
  readonly disk: string;
  readonly clock: Clock;
  readonly workload: Workload | null;
  /** Use a local disk larger than the image as it is (the guest sees its old contents beyond the image). */
  readonly allowLargerDisk?: boolean;
  readonly linkBytesPerSecond?: number;
  readonly latencyMs?: number;
  readonly blockBytes?: number;
  readonly backgroundRate?: number;
  /** The guest idle this long (ms): the background copy runs at the link's rate (engine fullRateWhenIdleMs). */
  readonly fullRateWhenIdleMs?: number;
  readonly fetchDepth?: number;
  /** Consecutive blocks fetched in one background request. */
  readonly fetchBlocks?: number;
  /** The engine's own local writes in flight (engine writeDepth). */
  readonly writeDepth?: number;
  /** Local writes between the engine's flushes (each flush records the blocks in the bitmap). */
  readonly flushEveryBytes?: number;
  /** Options for the image source (NBD pipelining depth, request size, timeouts...). */
  readonly sourceOptions?: OpenSourceOptions;
  readonly verifyBlock?: (block: number, data: Uint8Array) => boolean;
  /** Fetch attempts of the engine (and of a remote source per request) before the deployment pauses. */
  readonly retries?: number;
  /**
   * A deployment paused because the image source keeps failing gives up after this long once the
   * guest's workload is over (or there is none): run() rejects with a DeployError; the bitmap holds
   * what is durable, so a new run resumes. Default 60 000 ms.
   */
  readonly giveUpAfterMs?: number;
  readonly onProgress?: (progress: DeployProgress) => void;
  readonly onEvent?: (event: EngineEvent | SourceEvent) => void;
  /**
   * Builds the machine on the local disk (default: medic's emulated machine with the mediator, 64 MiB).
   * It must be mediated; the workload then runs on it (e.g. a real guest on an x86 emulator).
   */
  readonly machine?: (disk: FileBackend, clock: Clock) => Promise<Machine>;
}

export interface DeployProgress {
  readonly atMs: number;
  readonly localBytes: number;
  readonly totalBytes: number;
  readonly fetchedBytes: number;
  /** "copying" and "booting": copy-then-boot runs (the image is copied before the guest starts). */
  readonly phase: "streaming" | "de-virtualized" | "copying" | "booting";
  readonly guestDoneAtMs: number | null;
}

export interface DeploySummary {
  os_ready_ms: number | null;
  deploy_done_ms: number | null;
  devirtualized_at_ms: number | null;
  resumed: boolean;
  local_bytes_at_start: number;
  image_bytes: number;
  bytes_fetched: number;
  bytes_redirected: number;
  bytes_background: number;
  exits_total: number;
  exits_after_devirt: number;
  guest_reads: number;
  guest_writes: number;
  guest_errors: readonly string[];
  verified: boolean | null;
}

/** A user-facing deployment failure (bad image, disk, options): one clear line. */
export class DeployError extends Error {}

/**
 * One streaming deployment: the image source (optionally over a throttled link), the local disk
 * and its bitmap, the machine with the generated mediator, the engine, and the guest workload.
 */
export class DeploySession {
  private constructor(
    readonly options: DeployOptions,
    /** The image as the deployment reads it (over the throttled link, if any). */
    readonly image: BlockSource,
    /** The same image without the link's throttling: for verification. */
    readonly source: BlockSource,
    readonly disk: FileBackend,
    readonly bitmap: LocalBitmap,
    readonly resumed: boolean,
    readonly machine: Machine,
    readonly engine: DeploymentEngine,
  ) {}

  /** What the workload reported, once run() has finished. */
  workloadResult: WorkloadResult | null = null;

  /** The deployment as the replayer sees an environment (for trace workloads). */
  environment(): ReplayEnvironment {
    return {
      machine: this.machine,
      readDisk: (lba, count) => this.engine.readAsGuest(lba, count, (l, c) => this.disk.read(l, c)),
      guestIdle: () =>
        !this.machine.controller.busy && (!this.machine.host.on || this.machine.mediator!.guestIdle()),
      finish: () => this.engine.finished(),
      close: async () => {},
    };
  }

  static async open(options: DeployOptions): Promise<DeploySession> {
    const blockBytes = options.blockBytes ?? 64 * 1024;
    if (!Number.isInteger(blockBytes) || blockBytes < SECTOR_SIZE || blockBytes % SECTOR_SIZE !== 0) {
      throw new DeployError(`--block-size must be a positive multiple of ${SECTOR_SIZE}, not ${blockBytes}`);
    }
    let source: BlockSource;
    try {
      source = await openSource(options.image, {
        ...(options.retries === undefined ? {} : { retries: options.retries }),
        ...options.sourceOptions,
        clock: options.clock,
        onEvent: options.onEvent,
      });
    } catch (error) {
      throw new DeployError(`cannot open the image ${options.image}: ${messageOf(error)}`);
    }
    const imageBytes = source.sectors * SECTOR_SIZE;
    const disk = await openDisk(options.disk, source.sectors, options.allowLargerDisk === true).catch(
      async (error) => {
        await source.close();
        throw error;
      },
    );
    const image =
      options.linkBytesPerSecond || options.latencyMs
        ? new ThrottledSource(source, {
            clock: options.clock,
            bandwidth: options.linkBytesPerSecond ?? Number.POSITIVE_INFINITY,
            latency: options.latencyMs ?? 0,
          })
        : source;
    const identity = {
      blockBytes,
      imageSectors: source.sectors,
      imageTag: `${source.description}:${imageBytes}`,
    };
    let loaded: Awaited<ReturnType<typeof LocalBitmap.load>>;
    try {
      loaded = await LocalBitmap.load(`${options.disk}.medic-bitmap`, identity);
    } catch (error) {
      await image.close();
      await disk.close();
      throw new DeployError(messageOf(error));
    }
    let machine: Machine;
    try {
      machine = options.machine
        ? await options.machine(disk, options.clock)
        : new Machine({
            disks: [disk],
            clock: options.clock,
            mediated: true,
            ramMiB: 64,
            dmaBytes: DEFAULT_FETCH_ARENA_BYTES,
          });
      if (!machine.mediator) throw new DeployError("a streaming deployment needs a mediated machine");
    } catch (error) {
      await image.close();
      await disk.close();
      throw error;
    }
    const engine = new DeploymentEngine({
      device: machine.mediator!,
      image,
      bitmap: loaded.bitmap,
      clock: options.clock,
      backgroundRate: options.backgroundRate,
      fullRateWhenIdleMs: options.fullRateWhenIdleMs,
      fetchDepth: options.fetchDepth,
      fetchBlocks: options.fetchBlocks,
      writeDepth: options.writeDepth,
      fetchArena: machine.dmaArena,
      flushEveryBytes: options.flushEveryBytes,
      retries: options.retries,
      verifyBlock: options.verifyBlock,
      devirtualize: () => machine.devirtualize(),
      onEvent: options.onEvent,
    });
    return new DeploySession(options, image, source, disk, loaded.bitmap, loaded.resumed, machine, engine);
  }

  /** Runs the deployment and the workload to the end; returns the summary (verified: null). */
  async run(): Promise<DeploySummary> {
    const { clock } = this.options;
    const start = clock.now();
    const localAtStart = this.engine.localBytes;
    this.engine.start();
    let guestDoneAt: number | null = null;
    let readyAt: number | null = null;
    let result: WorkloadResult | null = null;
    void this.options.workload?.ready?.then(
      (at) => {
        readyAt = at - start;
      },
      () => {},
    );
    let workloadDone = !this.options.workload;
    const workload = this.options.workload
      ? this.options.workload.run(this.environment()).then((r) => {
          guestDoneAt = clock.now() - start;
          result = r;
          this.workloadResult = r;
          workloadDone = true;
        })
      : Promise.resolve();
    const ticker = this.progressTicker(start, () => readyAt ?? guestDoneAt);
    const watch = this.giveUpWhenStuck(() => workloadDone);
    try {
      await Promise.race([Promise.all([this.engine.finished(), workload]), watch.gaveUp]);
    } catch (error) {
      // The device only tells the engine "error"; the operator needs the disk's reason.
      const reason = this.machine.controller.lastDiskError;
      if (reason && error instanceof BlockError && /^local disk/.test(error.message))
        throw new DeployError(`${error.message} (the local disk said: ${reason})`, { cause: error });
      throw error;
    } finally {
      watch.stop();
      ticker.stop();
    }
    const stats = this.engine.stats;
    const finished = result as WorkloadResult | null;
    return {
      os_ready_ms: this.options.workload ? (readyAt ?? guestDoneAt) : null,
      deploy_done_ms: stats.completedAtMs === null ? null : Math.max(0, stats.completedAtMs - start),
      devirtualized_at_ms: stats.devirtualizedAtMs === null ? null : stats.devirtualizedAtMs - start,
      resumed: this.resumed,
      local_bytes_at_start: localAtStart,
      image_bytes: this.engine.totalBytes,
      bytes_fetched: stats.bytesFetched,
      bytes_redirected: stats.bytesRedirected,
      bytes_background: stats.bytesBackground,
      exits_total: this.machine.host.stats.exits,
      exits_after_devirt: this.machine.host.stats.exitsAfterOff,
      guest_reads: finished?.reads ?? stats.guestReads,
      guest_writes: finished?.writes ?? stats.guestWrites,
      guest_errors: finished?.errors ?? [],
      verified: null,
    };
  }

  /**
   * Compares the local disk with the image plus the guest's writes, block by block. Returns the
   * differing LBAs (at most `limit`).
   */
  async verify(written: ReadonlyMap<number, Uint8Array>, limit = 10): Promise<number[]> {
    await this.machine.controller.idle();
    const bad: number[] = [];
    const chunk = 2048;
    for (let lba = 0; lba < this.image.sectors && bad.length < limit; lba += chunk) {
      const count = Math.min(chunk, this.image.sectors - lba);
      const [local, expected] = await Promise.all([this.disk.read(lba, count), this.source.read(lba, count)]);
      for (let i = 0; i < count; i++) {
        const guest = written.get(lba + i);
        if (guest) expected.set(guest, i * SECTOR_SIZE);
      }
      if (Buffer.compare(local, expected) === 0) continue;
      for (let i = 0; i < count && bad.length < limit; i++) {
        const a = local.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
        const b = expected.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
        if (Buffer.compare(a, b) !== 0) bad.push(lba + i);
      }
    }
    return bad;
  }

  /**
   * Rejects once the deployment has been paused (the image source keeps failing) for
   * giveUpAfterMs while no guest workload runs any more.
   */
  private giveUpWhenStuck(workloadDone: () => boolean): { gaveUp: Promise<never>; stop(): void } {
    const limit = this.options.giveUpAfterMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<never>((_, reject) => {
      timer = setInterval(() => {
        const paused = this.engine.paused;
        if (!paused || !workloadDone() || this.options.clock.now() - paused.sinceMs < limit) return;
        clearInterval(timer);
        // What arrived before the trouble is kept: the next run resumes from there.
        void this.engine.checkpoint().then(() => {
          const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
          reject(
            new DeployError(
              `the image source keeps failing (${paused.error.message}); gave up after ${Math.round(limit / 1000)} s paused ` +
                `with ${mib(this.engine.localBytes)} of ${mib(this.engine.totalBytes)} local: run the same command again to resume`,
            ),
          );
        });
      }, 100);
    });
    gaveUp.catch(() => {});
    return { gaveUp, stop: () => clearInterval(timer) };
  }

  async close(): Promise<void> {
    await this.engine.checkpoint();
    this.engine.stop();
    await this.machine.controller.idle();
    await this.disk.close();
    await this.image.close();
  }

  private progressTicker(start: number, guestDone: () => number | null): { stop(): void } {
    const report = this.options.onProgress;
    if (!report) return { stop() {} };
    const emit = () =>
      report({
        atMs: this.options.clock.now() - start,
        localBytes: this.engine.localBytes,
        totalBytes: this.engine.totalBytes,
        fetchedBytes: this.engine.stats.bytesFetched,
        phase: this.engine.isDevirtualized ? "de-virtualized" : "streaming",
        guestDoneAtMs: guestDone(),
      });
    // Progress is shown in wall-clock time, whatever clock the machine runs on.
    const timer = setInterval(emit, 200);
    emit();
    return {
      stop() {
        clearInterval(timer);
        emit();
      },
    };
  }
}

/** Opens (or creates, sparse) the local disk; it must hold the whole image. */
async function openDisk(path: string, imageSectors: number, allowLarger: boolean): Promise<FileBackend> {
  let exists = true;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new DeployError(`the disk ${path} is not a regular file`);
    if (s.size < imageSectors * SECTOR_SIZE) {
      throw new DeployError(
        `the disk ${path} is ${s.size} bytes, smaller than the image (${imageSectors * SECTOR_SIZE} bytes)`,
      );
    }
    if (s.size > imageSectors * SECTOR_SIZE && !allowLarger) {
      // The guest would read whatever the disk held before beyond the image: say so, do not guess.
      throw new DeployError(
        `the image (${imageSectors * SECTOR_SIZE} bytes) is smaller than the disk ${path} (${s.size} bytes): ` +
          "the guest would see the disk's old contents beyond the image; pass --allow-larger-disk to deploy anyway",
      );
    }
  } catch (error) {
    if (error instanceof DeployError) throw error;
    exists = false;
  }
  try {
    return await FileBackend.open(path, {
      writable: true,
      create: !exists,
      sectors: exists ? undefined : imageSectors,
    });
  } catch (error) {
    throw new DeployError(`cannot open the disk ${path} for writing: ${messageOf(error)}`);
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
