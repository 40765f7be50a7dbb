import { BlockError, type BlockSource, SECTOR_SIZE } from "../block/types.ts";
import type { Clock } from "../vmx/clock.ts";
import type { LocalBitmap } from "./bitmap.ts";
import { FetchBuffers } from "./fetch-buffers.ts";

const DEFAULT_FETCH_DEPTH = 8;
const DEFAULT_FETCH_BLOCKS = 16;
const DEFAULT_MAX_CACHED_BYTES = 16 * 1024 * 1024;
/**
 * The VMM memory a deployment's background fetches land in (Machine dmaBytes, then fetchArena):
 * what the engine caches by default plus its fetches in flight, of the deploy default 64 KiB
 * blocks, so the mediator writes the whole copy to the disk from there, without a copy.
 */
export const DEFAULT_FETCH_ARENA_BYTES =
  DEFAULT_MAX_CACHED_BYTES + DEFAULT_FETCH_DEPTH * DEFAULT_FETCH_BLOCKS * 64 * 1024;

/**
 * The streaming-deployment engine (BMcast's copy-on-read plus background copy), device-agnostic:
 * it sees guest block requests through a mediator's interpret hook and answers with pass,
 * redirect (complete from the image) or defer; it copies the rest of the image with the
 * mediator's own commands (multiplex) while the guest is idle, and de-virtualizes at the end.
 */

/** The device-neutral view of a guest command that a generated mediator gives its policy. */
export interface BlockRequest {
  readonly op: "read" | "write" | "flush" | "other";
  readonly lba: number;
  readonly sectors: number;
  readData(): Uint8Array;
  writeData(data: Uint8Array): boolean;
}

export type Decision =
  | { readonly action: "pass" }
  | { readonly action: "complete"; readonly result: Promise<void> }
  | { readonly action: "defer"; readonly until: Promise<Decision> };

/** What the engine needs of a mediated device (a generated mediator fits it). */
export interface MediatedDevice {
  setPolicy(policy: {
    interpret(request: BlockRequest): Decision;
    completed?(request: BlockRequest, ok: boolean): void;
    idle?(port: number): void;
  }): void;
  issueOwn(
    port: number,
    command: { op: "read" | "write" | "flush"; lba: number; sectors: number; data?: Uint8Array },
    urgent?: boolean,
  ): Promise<{ ok: boolean; data?: Uint8Array; error?: string }>;
  bufferBytes(): number;
  /** True while the guest has a command anywhere (on the device, held or being completed); no side effects. */
  hasGuestWork?(): boolean;
}

export interface EngineOptions {
  readonly device: MediatedDevice;
  /** The port whose disk is deployed. */
  readonly port?: number;
  readonly image: BlockSource;
  readonly bitmap: LocalBitmap;
  readonly clock: Clock;
  /** Background fetches in flight (each of up to `fetchBlocks` blocks). */
  readonly fetchDepth?: number;
  /** Consecutive blocks fetched in one request. */
  readonly fetchBlocks?: number;
  /**
   * Fetched data waiting to be written locally, at most (default 16 MiB). Enough to keep a 1 Gbit/s
   * link busy for ~130 ms while the guest holds the disk; more only slows the copy down when the
   * disk is the limit (an idle guest on a fast link): the data waits so long between the socket
   * and the disk that it has left the CPU's caches (64 MiB made the fetch bench ~10% slower).
   */
  readonly maxCachedBytes?: number;
  /** Background copy rate limit in bytes per second (Infinity: as fast as the link allows; 0: off, copy on read only). */
  readonly backgroundRate?: number;
  /**
   * Once the guest has issued nothing for this long (ms), the background copy ignores
   * backgroundRate until the guest's next command: the limit leaves the guest's misses room on
   * the link, and an idle guest has none (default Infinity: the limit always holds).
   */
  readonly fullRateWhenIdleMs?: number;
  /** The background copy starts only after the guest has issued nothing for this long (ms). */
  readonly guestQuietMs?: number;
  /** Blocks after a guest miss fetched next. */
  readonly readAhead?: number;
  /**
   * How long a background fetch may take (ms) before the engine sends fewer and smaller ones: on a
   * slow link the guest's misses queue behind whatever background data is on its way.
   */
  readonly backgroundLatencyMs?: number;
  /**
   * Local writes between the engine's flushes (default 1 GiB). A flush holds the copy's writes
   * (the device runs it alone) for ~10–20 ms: every 64 MiB, it took 12–22% of a deployment over
   * loopback here. Up to ~8 Gbit/s flushEveryMs is the tighter bound on what a crash loses.
   */
  readonly flushEveryBytes?: number;
  /**
   * At most this long between a local write and the flush that makes it count (ms): on a slow link
   * the copy never pauses and flushEveryBytes take minutes, so progress and a resumed run would lag behind.
   */
  readonly flushEveryMs?: number;
  /**
   * The engine's own local writes in flight at once (the device works on them side by side; one
   * at a time leaves it idle between them).
   */
  readonly writeDepth?: number;
  /** Fetch attempts before a block fails. */
  readonly retries?: number;
  /**
   * After a fetch fails past its retries the deployment pauses (guest reads of missing blocks
   * fail as disk read errors; the copy stops) and tries again after this long, doubling up to 30 s.
   */
  readonly pauseMs?: number;
  /**
   * Memory to carve background fetch buffers from (optional): the VMM's DMA memory, whose data
   * the mediator's own writes send to the disk in place. Heap buffers serve beyond it (and
   * instead of it when it is null or absent).
   */
  readonly fetchArena?: Uint8Array | null;
  /** Checks a fetched block (a manifest); false makes the engine refetch, then fail. */
  readonly verifyBlock?: (block: number, data: Uint8Array) => boolean;
  /** Turns the VMM off; false when not yet safe (the engine tries again). */
  readonly devirtualize?: () => boolean;
  readonly onEvent?: (event: EngineEvent) => void;
}

export type EngineEvent =
  | { readonly type: "retry"; readonly block: number; readonly attempt: number; readonly error: string }
  | { readonly type: "error"; readonly error: string }
  | { readonly type: "paused"; readonly error: string; readonly retryInMs: number }
  | { readonly type: "resumed"; readonly pausedMs: number }
  | { readonly type: "complete"; readonly atMs: number }
  | { readonly type: "devirtualized"; readonly atMs: number };

export interface EngineStats {
  bytesFetched: number;
  bytesRedirected: number;
  bytesBackground: number;
  bytesWrittenLocal: number;
  guestReads: number;
  guestWrites: number;
  guestFlushes: number;
  redirectedReads: number;
  deferredCommands: number;
  ownWrites: number;
  ownFlushes: number;
  fetchRetries: number;
  completedAtMs: number | null;
  devirtualizedAtMs: number | null;
}

enum State {
  /** Only on the image server. */
  Remote = 0,
  Fetching = 1,
  /** Fetched, waiting for (or in) the engine's local write. */
  Cached = 2,
  /** On the local disk, not yet flushed. */
  Written = 3,
  /** Durable and in the persisted bitmap. */
  Local = 4,
  /** The guest is writing the whole block: the image no longer matters. */
  Guest = 5,
}

/** A run as fetched: its data, and the blocks (by index in the run) still wrong after every retry. */
interface FetchedRun {
  readonly data: Uint8Array;
  readonly rejected: ReadonlyMap<number, BlockError>;
}

interface Waiter {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

export class DeploymentEngine {
  readonly stats: EngineStats = {
    bytesFetched: 0,
    bytesRedirected: 0,
    bytesBackground: 0,
    bytesWrittenLocal: 0,
    guestReads: 0,
    guestWrites: 0,
    guestFlushes: 0,
    redirectedReads: 0,
    deferredCommands: 0,
    ownWrites: 0,
    ownFlushes: 0,
    fetchRetries: 0,
    completedAtMs: null,
    devirtualizedAtMs: null,
  };
  readonly blockBytes: number;
  readonly blocks: number;
  private readonly sectorsPerBlock: number;
  private readonly state: Uint8Array;
  private readonly cache = new Map<number, Uint8Array>();
  /** Where background fetches land (see FetchBuffers). */
  private readonly fetchBuffers: FetchBuffers;
  private readonly fetching = new Map<number, Promise<Uint8Array>>();
  private readonly landed = new Map<number, Waiter>();
  private readonly writtenSeq = new Map<number, number>();
  private readonly guestWriters = new Map<number, number>();
  private readonly guestBlocks = new WeakMap<BlockRequest, number[]>();
  private readonly flushSeqs = new WeakMap<BlockRequest, number>();
  private urgentQueue: number[] = [];
  private backgroundQueue: number[] = [];
  private priority: number[] = [];
  private cursor = 0;
  private seq = 0;
  private inFlightFetches = 0;
  private backgroundInFlight = 0;
  /** The background window: fetches in flight and blocks per fetch, fitted to the link (see adapt). */
  private windowDepth: number;
  private windowBlocks: number;
  private writerRunning = false;
  /** The engine's own writes on their way to the device, settling when they are accounted for. */
  private readonly writesInFlight = new Set<Promise<void>>();
  private bytesSinceFlush = 0;
  private lastFlushAt = 0;
  private nextBackgroundAt = 0;
  /** When the guest last issued a command: the background copy waits for a quiet moment. */
  private lastGuestAt = Number.NEGATIVE_INFINITY;
  /** One timer at most brings the paused writer back. */
  private quietRetryPending = false;
  private stopped = false;
  private failure: Error | null = null;
  /** Set while the image source keeps failing: the copy waits, then tries again. */
  private pause: { error: Error; since: number; until: number } | null = null;
  private pauseDelayMs = 0;
  /** Counts pauses: only a fetch started since the latest one proves the source is back. */
  private pauses = 0;
  private devirtualized = false;
  /** Resolvers of everyone waiting for the engine's state to change. */
  private readonly wakers = new Set<() => void>();
  private readonly o: Required<
    Omit<EngineOptions, "verifyBlock" | "devirtualize" | "onEvent" | "fetchArena">
  > &
    Pick<EngineOptions, "verifyBlock" | "devirtualize" | "onEvent" | "fetchArena">;

  constructor(options: EngineOptions) {
    this.o = {
      port: 0,
      fetchDepth: DEFAULT_FETCH_DEPTH,
      fetchBlocks: DEFAULT_FETCH_BLOCKS,
      maxCachedBytes: DEFAULT_MAX_CACHED_BYTES,
      backgroundRate: Number.POSITIVE_INFINITY,
      fullRateWhenIdleMs: Number.POSITIVE_INFINITY,
      readAhead: 16,
      backgroundLatencyMs: 100,
      guestQuietMs: 5,
      flushEveryBytes: 1024 * 1024 * 1024,
      flushEveryMs: 1000,
      writeDepth: 8,
      retries: 5,
      pauseMs: 1000,
      ...definedOnly(options),
    };
    const { bitmap } = options;
    this.blockBytes = bitmap.identity.blockBytes;
    if (this.blockBytes % SECTOR_SIZE !== 0 || this.blockBytes <= 0) {
      throw new BlockError(`block size ${this.blockBytes} is not a multiple of ${SECTOR_SIZE}`, "config");
    }
    this.sectorsPerBlock = this.blockBytes / SECTOR_SIZE;
    this.fetchBuffers = new FetchBuffers(
      this.o.fetchBlocks * this.blockBytes,
      options.fetchArena ?? undefined,
    );
    this.windowDepth = this.o.fetchDepth;
    this.windowBlocks = this.o.fetchBlocks;
    this.blocks = bitmap.blocks;
    this.state = new Uint8Array(this.blocks);
    for (let b = 0; b < this.blocks; b++) if (bitmap.has(b)) this.state[b] = State.Local;
  }

  /** Installs the policy and starts the background copy. */
  start(): void {
    this.lastFlushAt = this.o.clock.now();
    this.o.device.setPolicy({
      interpret: (request) => this.interpret(request),
      completed: (request, ok) => this.completed(request, ok),
      idle: () => this.kick(),
    });
    if (this.o.bitmap.complete) this.stats.completedAtMs = this.o.clock.now();
    void this.backgroundLoop();
  }

  /**
   * Makes what is written locally durable and records it in the bitmap (before the engine is
   * stopped early, so a new run refetches as little as possible). Errors are left to the caller's
   * earlier report: a failed flush only means those blocks are fetched again.
   */
  async checkpoint(): Promise<void> {
    // After a fatal error (the local disk failed) the device is not asked again.
    if (this.devirtualized || this.failure || this.writtenSeq.size === 0) return;
    const covered = this.seq;
    // A device that no longer answers (its port stopped for good) must not hold up the shutdown.
    const result = await Promise.race([
      this.o.device.issueOwn(this.o.port, { op: "flush", lba: 0, sectors: 0 }, true),
      this.o.clock.sleep(5000).then(() => ({ ok: false })),
    ]);
    if (result.ok) await this.promote(covered);
  }

  /** Stops background work (the guest's redirected reads still complete). */
  stop(): void {
    this.stopped = true;
    this.kick();
  }

  get error(): Error | null {
    return this.failure;
  }

  /** Why and since when the deployment is paused (the image source keeps failing), or null. */
  get paused(): { readonly error: Error; readonly sinceMs: number } | null {
    return this.pause && { error: this.pause.error, sinceMs: this.pause.since };
  }

  get localBytes(): number {
    return Math.min(this.o.bitmap.localBlocks * this.blockBytes, this.o.image.sectors * SECTOR_SIZE);
  }

  get totalBytes(): number {
    return this.o.image.sectors * SECTOR_SIZE;
  }

  get isDevirtualized(): boolean {
    return this.devirtualized;
  }

  /** Resolves when every block is durable locally and the VMM is off (or the engine failed). */
  async finished(): Promise<void> {
    while (!this.devirtualized && !this.failure && !this.stopped) await this.changed(50);
    if (this.failure) throw this.failure;
  }

  /** The disk as the guest would read it now: local blocks from the disk, others from the image. */
  async readAsGuest(
    lba: number,
    sectors: number,
    readLocal: (lba: number, sectors: number) => Promise<Uint8Array>,
  ): Promise<Uint8Array> {
    const out = new Uint8Array(sectors * SECTOR_SIZE);
    for (let at = lba; at < lba + sectors; ) {
      const block = this.blockOf(at);
      const end = Math.min(lba + sectors, (block + 1) * this.sectorsPerBlock);
      const state = block < this.blocks ? this.state[block]! : State.Local;
      const cached = this.cache.get(block);
      let data: Uint8Array;
      if (state === State.Local || state === State.Written || state === State.Guest)
        data = await readLocal(at, end - at);
      else if (cached)
        data = cached.subarray(
          (at - block * this.sectorsPerBlock) * SECTOR_SIZE,
          (end - block * this.sectorsPerBlock) * SECTOR_SIZE,
        );
      else data = await this.o.image.read(at, end - at);
      out.set(data, (at - lba) * SECTOR_SIZE);
      at = end;
    }
    return out;
  }

  // ---- interpret ------------------------------------------------------------------------------

  private interpret(request: BlockRequest): Decision {
    this.lastGuestAt = this.o.clock.now();
    switch (request.op) {
      case "read":
        this.stats.guestReads++;
        return this.interpretRead(request);
      case "write":
        this.stats.guestWrites++;
        return this.interpretWrite(request);
      case "flush":
        this.stats.guestFlushes++;
        this.flushSeqs.set(request, this.seq);
        return { action: "pass" };
      default:
        return { action: "pass" };
    }
  }

  private interpretRead(request: BlockRequest): Decision {
    const [first, last] = this.span(request);
    if (this.beyondImage(request)) return this.landThenPass(first, last);
    let onDisk = 0;
    let fromImage = 0;
    for (let b = first; b <= last; b++) {
      const s = this.state[b]!;
      if (s === State.Local || s === State.Written || s === State.Guest) onDisk++;
      else fromImage++;
    }
    if (fromImage === 0) return { action: "pass" };
    this.readAhead(last + 1);
    if (onDisk === 0) {
      // Redirect: every block comes from the image (or the engine's cache); the local write follows.
      this.stats.redirectedReads++;
      return { action: "complete", result: this.redirect(request, first, last) };
    }
    // Some blocks are local (perhaps written by the guest): land the rest, then let the device read.
    this.stats.deferredCommands++;
    return { action: "defer", until: this.landAll(first, last).then(() => ({ action: "pass" }) as const) };
  }

  /**
   * A request that runs past the end of the image goes to the device, which answers it as it
   * answers any such request (an error past the disk's end); the image's part lands first.
   */
  private beyondImage(request: BlockRequest): boolean {
    return request.lba + request.sectors > this.o.image.sectors;
  }

  private landThenPass(first: number, last: number): Decision {
    if (first > last) return { action: "pass" };
    this.stats.deferredCommands++;
    return { action: "defer", until: this.landAll(first, last).then(() => ({ action: "pass" }) as const) };
  }

  private async redirect(request: BlockRequest, first: number, last: number): Promise<void> {
    const parts = await Promise.all(this.range(first, last).map((b) => this.imageData(b, true)));
    const data = new Uint8Array(request.sectors * SECTOR_SIZE);
    for (let i = 0; i < parts.length; i++) {
      const blockStart = (first + i) * this.sectorsPerBlock;
      const from = Math.max(request.lba, blockStart);
      const to = Math.min(request.lba + request.sectors, blockStart + this.sectorsPerBlock);
      if (to <= from) continue;
      data.set(
        parts[i]!.subarray((from - blockStart) * SECTOR_SIZE, (to - blockStart) * SECTOR_SIZE),
        (from - request.lba) * SECTOR_SIZE,
      );
    }
    if (!request.writeData(data)) throw new Error("aborted", { cause: "aborted" });
    this.stats.bytesRedirected += data.length;
  }

  private interpretWrite(request: BlockRequest): Decision {
    const [first, last] = this.span(request);
    if (this.beyondImage(request)) return this.landThenPass(first, last);
    const waitFor: number[] = [];
    for (let b = first; b <= last; b++) {
      const s = this.state[b]!;
      if (s === State.Fetching || s === State.Cached) waitFor.push(b);
      else if (s === State.Remote && !this.covers(request, b)) waitFor.push(b);
    }
    if (waitFor.length === 0) return this.passWrite(request, first, last);
    // Image data must land before the guest's data goes over it, never after.
    this.stats.deferredCommands++;
    return {
      action: "defer",
      until: Promise.all(waitFor.map((b) => this.land(b))).then(() => this.interpretWrite(request)),
    };
  }

  private passWrite(request: BlockRequest, first: number, last: number): Decision {
    const claimed: number[] = [];
    for (let b = first; b <= last; b++) {
      const s = this.state[b]!;
      if ((s === State.Remote || s === State.Guest) && this.covers(request, b)) {
        this.state[b] = State.Guest;
        this.guestWriters.set(b, (this.guestWriters.get(b) ?? 0) + 1);
        claimed.push(b);
      }
    }
    if (claimed.length > 0) this.guestBlocks.set(request, claimed);
    return { action: "pass" };
  }

  private completed(request: BlockRequest, ok: boolean): void {
    this.lastGuestAt = this.o.clock.now();
    if (request.op === "write") {
      for (const b of this.guestBlocks.get(request) ?? []) {
        const writers = (this.guestWriters.get(b) ?? 1) - 1;
        if (writers > 0) this.guestWriters.set(b, writers);
        else this.guestWriters.delete(b);
        if (this.state[b] !== State.Guest) continue;
        if (ok) this.markWritten(b);
        else if (writers === 0) this.state[b] = State.Remote;
      }
    } else if (request.op === "flush" && ok) {
      const covered = this.flushSeqs.get(request);
      if (covered !== undefined) void this.promote(covered);
    }
    this.kick();
  }

  // ---- fetching -------------------------------------------------------------------------------

  /** The image's data of a block: from the cache, a fetch in flight, or a new fetch. */
  private imageData(block: number, urgent: boolean): Promise<Uint8Array> {
    const cached = this.cache.get(block);
    if (cached) return Promise.resolve(this.stable(cached));
    const fetching = this.fetching.get(block);
    if (fetching) return fetching.then((data) => this.stable(data));
    return this.fetchRun(block, 1, urgent);
  }

  /** Data that stays valid: a copy when it lives in a pooled buffer, which is reused once written. */
  private stable(data: Uint8Array): Uint8Array {
    return this.fetchBuffers.owns(data) ? data.slice() : data;
  }

  /**
   * Fetches `count` consecutive remote blocks from `first` in one request; resolves with the
   * first block's data. Every block's data goes to those waiting for it even when the guest
   * wrote the block meanwhile (then it is not cached: the guest's data wins on the disk).
   */
  private fetchRun(first: number, count: number, urgent: boolean): Promise<Uint8Array> {
    const blocks = this.range(first, first + count - 1);
    const lba = first * this.sectorsPerBlock;
    const sectors = Math.min(count * this.sectorsPerBlock, this.o.image.sectors - lba);
    for (const b of blocks) this.state[b] = State.Fetching;
    this.inFlightFetches++;
    if (!urgent) this.backgroundInFlight++;
    const sentAt = this.o.clock.now();
    const era = this.pauses;
    const run = this.fetchWithRetries(first, lba, sectors, !urgent);
    const slice = (data: Uint8Array, i: number) =>
      data.subarray(i * this.blockBytes, Math.min(data.length, (i + 1) * this.blockBytes));
    run.then(
      ({ data, rejected }) => {
        this.inFlightFetches--;
        if (!urgent) {
          this.backgroundInFlight--;
          this.adapt(this.o.clock.now() - sentAt);
        }
        // Only data that checks shows the source is back.
        if (era === this.pauses && rejected.size < blocks.length) this.resume();
        this.stats.bytesFetched += data.length;
        if (!urgent) this.stats.bytesBackground += data.length;
        for (const [i, b] of blocks.entries()) {
          this.fetching.delete(b);
          const error = rejected.get(i);
          if (error !== undefined) {
            // Never cached: it stays remote and is fetched again after the pause.
            this.release(data);
            if (this.state[b] === State.Fetching) this.state[b] = State.Remote;
            this.landed.get(b)?.reject(error);
            this.landed.delete(b);
            continue;
          }
          if (this.state[b] !== State.Fetching) {
            this.release(data); // the guest wrote it meanwhile
            continue;
          }
          this.state[b] = State.Cached;
          this.cache.set(b, slice(data, i));
          (this.landed.has(b) ? this.urgentQueue : this.backgroundQueue).push(b);
        }
        const [firstRejected] = rejected.values();
        if (firstRejected !== undefined) this.fetchFailed(firstRejected);
        this.kick();
      },
      (error: unknown) => {
        this.inFlightFetches--;
        if (!urgent) this.backgroundInFlight--;
        for (const b of blocks) {
          this.fetching.delete(b);
          if (this.state[b] === State.Fetching) this.state[b] = State.Remote;
          this.landed.get(b)?.reject(error);
          this.landed.delete(b);
        }
        this.fetchFailed(error);
      },
    );
    for (const [i, b] of blocks.entries()) {
      const own = run.then(({ data, rejected }) => {
        const error = rejected.get(i);
        if (error !== undefined) throw error;
        return slice(data, i);
      });
      own.catch(() => {});
      this.fetching.set(b, own);
    }
    return this.fetching.get(first)!;
  }

  /** A fetch of blocks failed past its retries: fatal errors end the deployment, others pause it. */
  private fetchFailed(error: unknown): void {
    if (this.stopped) this.kick();
    else if (isFatal(error)) this.fail(error);
    else this.pauseFor(error);
  }

  /**
   * Reads the run, checks each block, and reads again only the blocks that did not check (the
   * others are kept), up to `retries` times. Rejects when the run could not be read at all;
   * blocks still wrong after the last try come back in `rejected`, by index in the run.
   */
  private async fetchWithRetries(
    first: number,
    lba: number,
    sectors: number,
    pooled: boolean,
  ): Promise<FetchedRun> {
    let data: Uint8Array | null = null;
    let wrong: number[] = [];
    let lastError: unknown;
    for (let attempt = 0; attempt <= this.o.retries; attempt++) {
      try {
        if (data === null) {
          data = this.whole(
            pooled ? await this.readPooled(lba, sectors) : await this.o.image.read(lba, sectors),
            sectors,
          );
          wrong = this.mismatches(first, data, this.range(0, Math.ceil(data.length / this.blockBytes) - 1));
        } else {
          await this.reread(lba, data, wrong);
          wrong = this.mismatches(first, data, wrong);
        }
        if (wrong.length === 0) return { data, rejected: new Map() };
        lastError = new BlockError(`block ${first + wrong[0]!} does not match the manifest`, "io");
      } catch (error) {
        lastError = error;
        if (isFatal(error) || this.stopped) break;
      }
      if (attempt === this.o.retries) break;
      this.stats.fetchRetries++;
      this.o.onEvent?.({ type: "retry", block: first, attempt: attempt + 1, error: messageOf(lastError) });
      await this.o.clock.sleep(Math.min(2000, 50 * 2 ** attempt));
    }
    if (data === null) {
      throw new BlockError(
        `cannot fetch sectors ${lba}..${lba + sectors - 1} of the image: ${messageOf(lastError)}`,
        lastError instanceof BlockError ? lastError.code : "io",
        { cause: lastError },
      );
    }
    const rejected = new Map<number, BlockError>();
    for (const i of wrong) {
      const at = lba + i * this.sectorsPerBlock;
      const last = Math.min(lba + sectors, at + this.sectorsPerBlock) - 1;
      rejected.set(
        i,
        new BlockError(`cannot fetch sectors ${at}..${last} of the image: ${messageOf(lastError)}`, "io", {
          cause: lastError,
        }),
      );
    }
    return { data, rejected };
  }

  /** The blocks among `candidates` (indices in the run at `first`) whose data fails the check. */
  private mismatches(first: number, data: Uint8Array, candidates: readonly number[]): number[] {
    const check = this.o.verifyBlock;
    if (!check) return [];
    return candidates.filter(
      (i) => !check(first + i, data.subarray(i * this.blockBytes, (i + 1) * this.blockBytes)),
    );
  }

  /** `data` as read from the image, if it holds all `sectors` sectors. */
  private whole(data: Uint8Array, sectors: number): Uint8Array {
    if (data.length !== sectors * SECTOR_SIZE)
      throw new BlockError(`short read from ${this.o.image.description}`, "short-read");
    return data;
  }

  /** Reads the blocks `indices` of the run at sector `lba` again, into their place in `data`. */
  private async reread(lba: number, data: Uint8Array, indices: readonly number[]): Promise<void> {
    for (const i of indices) {
      const at = i * this.blockBytes;
      const sectors = Math.min(this.blockBytes, data.length - at) / SECTOR_SIZE;
      const fresh = await this.o.image.read(lba + i * this.sectorsPerBlock, sectors);
      data.set(this.whole(fresh, sectors), at);
    }
  }

  /** Reads into a buffer from the pool (a fresh read when the source cannot read into one). */
  private async readPooled(lba: number, sectors: number): Promise<Uint8Array> {
    const image = this.o.image;
    const size = this.o.fetchBlocks * this.blockBytes;
    if (image.readInto === undefined || sectors * SECTOR_SIZE > size) return image.read(lba, sectors);
    const data = this.fetchBuffers.take().subarray(0, sectors * SECTOR_SIZE);
    // A failed read's buffer is not reused: a request the source gave up on might still land in it.
    await image.readInto(lba, sectors, data);
    this.fetchBuffers.hold(data, Math.ceil(data.length / this.blockBytes));
    return data;
  }

  /** One block of a pooled buffer no longer needs it (written locally, or not needed at all). */
  private release(data: Uint8Array | undefined): void {
    if (data !== undefined) this.fetchBuffers.release(data);
  }

  private readAhead(from: number): void {
    if (this.o.backgroundRate <= 0) return;
    for (let b = from; b < Math.min(this.blocks, from + this.o.readAhead); b++) {
      if (this.state[b] === State.Remote) this.priority.push(b);
    }
    this.kick();
  }

  // ---- local writes ---------------------------------------------------------------------------

  /** Resolves once `block` is on the local disk (fetching and writing it first if need be). */
  private land(block: number): Promise<void> {
    const s = this.state[block]!;
    if (s === State.Written || s === State.Local || s === State.Guest) return Promise.resolve();
    let waiter = this.landed.get(block);
    if (!waiter) {
      let resolve!: () => void;
      let reject!: (error: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => {});
      waiter = { promise, resolve, reject };
      this.landed.set(block, waiter);
    }
    if (s === State.Remote) void this.imageData(block, true).catch(() => {});
    else if (s === State.Cached) {
      // Move it to the front: a guest command waits for it.
      const i = this.backgroundQueue.indexOf(block);
      if (i >= 0) {
        this.backgroundQueue.splice(i, 1);
        this.urgentQueue.push(block);
      }
    }
    this.kick();
    return waiter.promise;
  }

  private landAll(first: number, last: number): Promise<void> {
    return Promise.all(this.range(first, last).map((b) => this.land(b))).then(() => {});
  }

  private markWritten(block: number): void {
    this.state[block] = State.Written;
    this.writtenSeq.set(block, this.seq++);
    const waiter = this.landed.get(block);
    if (waiter) {
      this.landed.delete(block);
      waiter.resolve();
    }
  }

  /**
   * Writes cached blocks with the mediator's own commands, coalescing neighbours, with up to
   * `writeDepth` writes in flight.
   */
  private async writer(): Promise<void> {
    if (this.writerRunning) return;
    this.writerRunning = true;
    let pausedForGuest = false;
    try {
      while (!this.failure && !this.stopped) {
        const urgent = this.urgentQueue.length > 0;
        const quietFor = this.guestQuietFor();
        if (!urgent && this.backgroundQueue.length > 0 && quietFor < this.o.guestQuietMs) {
          // Background writes wait for a quiet guest too; come back when it may be quiet.
          if (!this.quietRetryPending) {
            this.quietRetryPending = true;
            void this.o.clock.sleep(Math.max(0.5, this.o.guestQuietMs - quietFor)).then(() => {
              this.quietRetryPending = false;
              this.kick();
            });
          }
          pausedForGuest = true;
          break;
        }
        if (this.writesInFlight.size >= this.o.writeDepth) {
          await Promise.race(this.writesInFlight);
          continue;
        }
        const queue = urgent ? this.urgentQueue : this.backgroundQueue;
        const first = queue.shift();
        if (first === undefined) {
          // Flush when the copy pauses (nothing more on its way), not after every burst; the
          // last write in flight comes back here when it is done.
          if (
            this.bytesSinceFlush > 0 &&
            this.writesInFlight.size === 0 &&
            (this.inFlightFetches === 0 || this.flushOverdue())
          )
            await this.ownFlush();
          break;
        }
        if (this.state[first] !== State.Cached) continue;
        const run = [first];
        const limit = Math.max(
          1,
          Math.floor(Math.min(this.o.device.bufferBytes(), 4 * 1024 * 1024) / this.blockBytes),
        );
        while (run.length < limit) {
          const last = run[run.length - 1]!;
          const next = last + 1;
          const i = queue.indexOf(next);
          if (i < 0 || this.state[next] !== State.Cached) break;
          // A run within one fetch's buffer is written without a copy: a big enough run stops there.
          if (
            run.length * this.blockBytes >= ZERO_COPY_RUN_BYTES &&
            !adjacent(this.cache.get(last)!, this.cache.get(next)!)
          )
            break;
          queue.splice(i, 1);
          run.push(next);
        }
        // The run's blocks stay Cached until their write is done (out of the queues meanwhile).
        const write = this.writeRun(run, queue, urgent);
        this.writesInFlight.add(write);
        void write.finally(() => {
          this.writesInFlight.delete(write);
          this.kick();
        });
        if (this.bytesSinceFlush >= this.o.flushEveryBytes || this.flushOverdue()) await this.ownFlush();
      }
    } finally {
      this.writerRunning = false;
    }
    if (
      !pausedForGuest &&
      !this.stopped &&
      this.urgentQueue.length + this.backgroundQueue.length > 0 &&
      this.writesInFlight.size < this.o.writeDepth &&
      !this.failure
    )
      void this.writer();
  }

  /** One own write of the consecutive blocks `run`; never rejects. */
  private async writeRun(run: readonly number[], queue: number[], urgent: boolean): Promise<void> {
    const data = concat(run.map((b) => this.cache.get(b)!));
    const lba = run[0]! * this.sectorsPerBlock;
    const result = await this.o.device.issueOwn(
      this.o.port,
      { op: "write", lba, sectors: data.length / SECTOR_SIZE, data },
      urgent,
    );
    this.stats.ownWrites++;
    if (!result.ok) {
      if (result.error === "aborted") {
        // The guest reset or stopped the port under us: try again shortly.
        queue.unshift(...run.filter((b) => this.state[b] === State.Cached));
        await this.o.clock.sleep(1);
        return;
      }
      this.fail(new BlockError(`local disk write at sector ${lba} failed: ${result.error}`, "io"));
      return;
    }
    this.stats.bytesWrittenLocal += data.length;
    this.bytesSinceFlush += data.length;
    for (const b of run) {
      this.release(this.cache.get(b));
      this.cache.delete(b);
      if (this.state[b] === State.Cached) this.markWritten(b);
    }
  }

  /** Written data has waited flushEveryMs for a flush. */
  private flushOverdue(): boolean {
    return this.bytesSinceFlush > 0 && this.o.clock.now() - this.lastFlushAt >= this.o.flushEveryMs;
  }

  private async ownFlush(): Promise<void> {
    const covered = this.seq;
    this.bytesSinceFlush = 0;
    this.lastFlushAt = this.o.clock.now();
    const result = await this.o.device.issueOwn(this.o.port, { op: "flush", lba: 0, sectors: 0 }, false);
    this.stats.ownFlushes++;
    if (!result.ok) {
      if (result.error !== "aborted")
        this.fail(new BlockError(`local disk flush failed: ${result.error}`, "io"));
      return;
    }
    await this.promote(covered);
  }

  /** Blocks written before a flush that finished are durable: into the bitmap. */
  private async promote(coveredSeq: number): Promise<void> {
    for (const [b, s] of this.writtenSeq) {
      if (s >= coveredSeq) continue;
      this.writtenSeq.delete(b);
      if (this.state[b] === State.Written) {
        this.state[b] = State.Local;
        this.o.bitmap.mark(b);
      }
    }
    try {
      await this.o.bitmap.save();
    } catch (error) {
      this.fail(new Error(`cannot save the bitmap: ${messageOf(error)}`));
      return;
    }
    if (this.o.bitmap.complete && this.stats.completedAtMs === null) {
      this.stats.completedAtMs = this.o.clock.now();
      this.o.onEvent?.({ type: "complete", atMs: this.stats.completedAtMs });
    }
    this.kick();
  }

  // ---- background copy ------------------------------------------------------------------------

  /** Resolves at the next change of state, or after `ms` at the latest. */
  private changed(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wakers.add(resolve);
      void this.o.clock.sleep(ms).then(() => {
        this.wakers.delete(resolve);
        resolve();
      });
    });
  }

  private kick(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
    // A stopped engine writes nothing more (each of its writes still in flight ends here).
    if (!this.stopped && this.urgentQueue.length + this.backgroundQueue.length > 0) void this.writer();
  }

  private async backgroundLoop(): Promise<void> {
    while (!this.stopped && !this.failure && !this.devirtualized) {
      // De-virtualize only once the complete map is persisted: after that no image data may
      // ever be written again, or a resumed run could overwrite the guest's newer writes.
      if (this.stats.completedAtMs !== null) {
        if (this.tryDevirtualize()) break;
      } else if (this.pause && this.o.clock.now() < this.pause.until) {
        // The source keeps failing: let it recover (guest misses still try, and end the pause).
        await this.changed(this.pause.until - this.o.clock.now());
        continue;
      } else {
        // A background rate of 0 turns the background copy off: only the guest's misses are fetched.
        const next = this.o.backgroundRate > 0 ? this.nextRemote() : -1;
        const room = this.cache.size * this.blockBytes < this.o.maxCachedBytes;
        const quietFor = this.guestQuietFor();
        if (next >= 0 && quietFor < this.o.guestQuietMs) {
          // Back off while the guest is busy: its commands must not queue behind the copy.
          await this.changed(Math.max(0.5, this.o.guestQuietMs - quietFor));
          continue;
        }
        // Right after a pause one fetch probes the source; the others wait for its answer.
        const depth = this.pause ? 1 : this.windowDepth;
        if (
          next >= 0 &&
          room &&
          this.backgroundInFlight < depth &&
          this.inFlightFetches < this.o.fetchDepth
        ) {
          const now = this.o.clock.now();
          const idle = Number.isFinite(this.o.fullRateWhenIdleMs) && quietFor >= this.o.fullRateWhenIdleMs;
          const limited = Number.isFinite(this.o.backgroundRate) && !idle;
          if (limited && now < this.nextBackgroundAt) {
            // Rate limit: wait, then look again (the guest may have fetched that block meanwhile).
            await this.o.clock.sleep(this.nextBackgroundAt - now);
            continue;
          }
          const count = this.runLength(next);
          const bytes = count * this.blockBytes;
          if (limited) {
            this.nextBackgroundAt =
              Math.max(now, this.nextBackgroundAt) + (bytes / this.o.backgroundRate) * 1000;
          }
          void this.fetchRun(next, count, false).catch(() => {});
          continue;
        }
        if (next < 0 && this.inFlightFetches === 0 && this.cache.size === 0 && !this.writerRunning) {
          // Everything is written; some blocks wait for a flush (the guest's or ours).
          if (this.writtenSeq.size > 0) await this.ownFlush();
        }
      }
      await this.changed(this.stats.completedAtMs !== null ? 5 : 20);
    }
  }

  /** How long the guest has had nothing going on (0 while it has commands anywhere). */
  private guestQuietFor(): number {
    if (this.o.device.hasGuestWork?.()) {
      this.lastGuestAt = this.o.clock.now();
      return 0;
    }
    return this.o.clock.now() - this.lastGuestAt;
  }

  private tryDevirtualize(): boolean {
    if (this.devirtualized) return true;
    const off = this.o.devirtualize?.() ?? false;
    if (off) {
      this.devirtualized = true;
      this.fetchBuffers.close();
      this.stats.devirtualizedAtMs = this.o.clock.now();
      this.o.onEvent?.({ type: "devirtualized", atMs: this.stats.devirtualizedAtMs });
      this.kick();
    }
    return off;
  }

  /** Next block to copy: read-ahead after guest misses first, then sequentially. */
  private nextRemote(): number {
    while (this.priority.length > 0) {
      const b = this.priority.shift()!;
      if (this.state[b] === State.Remote) return b;
    }
    for (let scanned = 0; scanned < this.blocks; scanned++) {
      if (this.cursor >= this.blocks) this.cursor = 0;
      const b = this.cursor;
      if (this.state[b] === State.Remote) return b;
      this.cursor++;
    }
    return -1;
  }

  /**
   * Fits the background window to the link, delay-based: a fetch that took longer than the
   * latency budget means data is queueing on the link (and a guest miss would wait behind it), so
   * fetches get smaller, then fewer (never under two, which keep the link busy); fetches well
   * within the budget let the window grow back to the configured size.
   */
  private adapt(serviceMs: number): void {
    const budget = this.o.backgroundLatencyMs;
    if (serviceMs > budget) {
      if (this.windowBlocks > 1) this.windowBlocks = Math.max(1, this.windowBlocks >> 1);
      else this.windowDepth = Math.max(2, this.windowDepth >> 1);
    } else if (serviceMs < budget / 4) {
      if (this.windowDepth < this.o.fetchDepth) this.windowDepth++;
      else this.windowBlocks = Math.min(this.o.fetchBlocks, this.windowBlocks * 2);
    }
  }

  private runLength(first: number): number {
    let count = 1;
    while (
      count < this.windowBlocks &&
      first + count < this.blocks &&
      this.state[first + count] === State.Remote
    )
      count++;
    return count;
  }

  // ---- helpers --------------------------------------------------------------------------------

  /** The image source failed past its retries: pause the copy, try again later (backing off). */
  private pauseFor(error: unknown): void {
    if (this.failure) return;
    const now = this.o.clock.now();
    const err = error instanceof Error ? error : new Error(String(error));
    if (this.pause && now < this.pause.until) {
      this.pause.error = err;
      return;
    }
    this.pauses++;
    this.pauseDelayMs = this.pauseDelayMs === 0 ? this.o.pauseMs : Math.min(30_000, this.pauseDelayMs * 2);
    this.pause = { error: err, since: this.pause?.since ?? now, until: now + this.pauseDelayMs };
    this.o.onEvent?.({ type: "paused", error: err.message, retryInMs: this.pauseDelayMs });
    this.kick();
  }

  /** A fetch succeeded: the source is back. */
  private resume(): void {
    this.pauseDelayMs = 0;
    if (!this.pause) return;
    const pausedMs = this.o.clock.now() - this.pause.since;
    this.pause = null;
    this.o.onEvent?.({ type: "resumed", pausedMs });
    this.kick();
  }

  private fail(error: unknown): void {
    if (this.failure) return;
    this.failure = error instanceof Error ? error : new Error(String(error));
    this.o.onEvent?.({ type: "error", error: this.failure.message });
    for (const waiter of this.landed.values()) waiter.reject(this.failure);
    this.landed.clear();
    this.kick();
  }

  private blockOf(lba: number): number {
    return Math.floor(lba / this.sectorsPerBlock);
  }

  /** Blocks of the image a request touches (none when it lies beyond the image). */
  private span(request: BlockRequest): [number, number] {
    const first = this.blockOf(request.lba);
    const last = Math.min(this.blocks - 1, this.blockOf(request.lba + Math.max(1, request.sectors) - 1));
    return [first, last];
  }

  private covers(request: BlockRequest, block: number): boolean {
    const start = block * this.sectorsPerBlock;
    const end = Math.min(start + this.sectorsPerBlock, this.o.image.sectors);
    return request.lba <= start && request.lba + request.sectors >= end;
  }

  private range(first: number, last: number): number[] {
    const out: number[] = [];
    for (let b = first; b <= last; b++) out.push(b);
    return out;
  }
}

/** Runs at least this long are not extended past a fetch's buffer (which would need a copy). */
const ZERO_COPY_RUN_BYTES = 256 * 1024;

/** True when `b` starts where `a` ends in the same buffer (neighbouring blocks of one fetch). */
function adjacent(a: Uint8Array, b: Uint8Array): boolean {
  return a.buffer === b.buffer && a.byteOffset + a.byteLength === b.byteOffset;
}

/** The parts in one array: a view when they already lie back to back in one buffer, else a copy. */
function concat(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let contiguous = true;
  for (let i = 1; i < parts.length && contiguous; i++) contiguous = adjacent(parts[i - 1]!, parts[i]!);
  if (contiguous) {
    const bytes = parts.reduce((n, p) => n + p.length, 0);
    return new Uint8Array(parts[0]!.buffer, parts[0]!.byteOffset, bytes);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Options the caller left undefined keep their defaults. */
function definedOnly<T extends object>(options: T): T {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as T;
}

/** Errors that waiting cannot cure: the image changed, or the request is wrong. */
function isFatal(error: unknown): boolean {
  return (
    error instanceof BlockError &&
    (error.code === "changed" || error.code === "config" || error.code === "range")
  );
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
