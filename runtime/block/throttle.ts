import type { Clock } from "../vmx/clock.ts";
import { checkSectorData } from "./guards.ts";
import {
  type BlockBackend,
  BlockError,
  type BlockSource,
  checkRange,
  checkTarget,
  SECTOR_SIZE,
} from "./types.ts";

/** Bytes per second of a link of `n` Mbit/s (links are sold in bits, the code counts bytes). */
export function megabits(n: number): number {
  return (n * 1_000_000) / 8;
}

export interface LinkOptions {
  clock: Clock;
  /** Bytes per second; Infinity for no bandwidth limit. */
  bandwidth: number;
  /** Milliseconds added once per request; the latencies of concurrent requests overlap. */
  latency?: number;
}

export interface LinkStats {
  requests: number;
  bytes: number;
  readRequests: number;
  readBytes: number;
  writeRequests: number;
  writeBytes: number;
}

/**
 * A single serial link. A request first waits out the latency (concurrently with other
 * requests), then its bytes go over the wire once the link is free: concurrent requests share
 * the bandwidth instead of each getting all of it.
 */
export class Link {
  readonly clock: Clock;
  readonly bandwidth: number;
  readonly latency: number;
  readonly stats: LinkStats = {
    requests: 0,
    bytes: 0,
    readRequests: 0,
    readBytes: 0,
    writeRequests: 0,
    writeBytes: 0,
  };
  #freeAt = Number.NEGATIVE_INFINITY;

  constructor(options: LinkOptions) {
    const { clock, bandwidth, latency = 0 } = options;
    if (!(bandwidth > 0))
      throw new BlockError(`link: bandwidth must be positive, got ${bandwidth}`, "config");
    if (!(latency >= 0) || latency === Number.POSITIVE_INFINITY) {
      throw new BlockError(`link: latency must be a finite non-negative number, got ${latency}`, "config");
    }
    this.clock = clock;
    this.bandwidth = bandwidth;
    this.latency = latency;
  }

  /** Books the link for a request issued now; returns its completion time on the link's clock. */
  reserve(bytes: number, kind: "read" | "write"): number {
    const stats = this.stats;
    stats.requests++;
    stats.bytes += bytes;
    if (kind === "read") {
      stats.readRequests++;
      stats.readBytes += bytes;
    } else {
      stats.writeRequests++;
      stats.writeBytes += bytes;
    }
    const start = Math.max(this.clock.now() + this.latency, this.#freeAt);
    this.#freeAt = start + (bytes * 1000) / this.bandwidth;
    return this.#freeAt;
  }

  /** Resolves when a request of `bytes` issued now has gone over the link. */
  async transfer(bytes: number, kind: "read" | "write"): Promise<void> {
    const wait = this.reserve(bytes, kind) - this.clock.now();
    if (wait > 0) await this.clock.sleep(wait);
  }

  toString(): string {
    const rate = Number.isFinite(this.bandwidth) ? `${(this.bandwidth * 8) / 1e6} Mbit/s` : "unlimited";
    return `${rate}, ${this.latency} ms`;
  }
}

function toLink(link: Link | LinkOptions): Link {
  return link instanceof Link ? link : new Link(link);
}

/**
 * Makes a source as slow as a network link: data arrives no sooner than the link allows, and
 * no sooner than the source itself delivers it. Closing it closes the inner source.
 */
export class ThrottledSource implements BlockSource {
  readonly link: Link;
  readonly description: string;
  readonly #inner: BlockSource;

  constructor(inner: BlockSource, link: Link | LinkOptions) {
    this.#inner = inner;
    this.link = toLink(link);
    this.description = `${inner.description} (throttled ${this.link})`;
  }

  get sectors(): number {
    return this.#inner.sectors;
  }

  get stats(): Readonly<LinkStats> {
    return this.link.stats;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    // Fail bad requests before they occupy the link.
    checkRange(this.description, this.sectors, lba, count);
    const [data] = await Promise.all([
      this.#inner.read(lba, count),
      this.link.transfer(count * SECTOR_SIZE, "read"),
    ]);
    return data;
  }

  /** Like read(), into the caller's buffer (through the inner source's readInto when it has one). */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    checkRange(this.description, this.sectors, lba, count);
    checkTarget(this.description, count, target, offset);
    const inner = this.#inner;
    const data =
      inner.readInto !== undefined
        ? inner.readInto(lba, count, target, offset)
        : inner.read(lba, count).then((bytes) => target.set(bytes, offset));
    await Promise.all([data, this.link.transfer(count * SECTOR_SIZE, "read")]);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}

export interface ThrottledBackendOptions {
  /** Send writes over the link too (default true); otherwise they go straight to the backend. */
  throttleWrites?: boolean;
}

/** A throttled writable device, e.g. a slow local disk; reads and writes share one link. */
export class ThrottledBackend extends ThrottledSource implements BlockBackend {
  readonly throttleWrites: boolean;
  readonly #backend: BlockBackend;

  constructor(inner: BlockBackend, link: Link | LinkOptions, options: ThrottledBackendOptions = {}) {
    super(inner, link);
    this.#backend = inner;
    this.throttleWrites = options.throttleWrites ?? true;
  }

  async write(lba: number, data: Uint8Array): Promise<void> {
    const count = checkSectorData(this.description, data);
    checkRange(this.description, this.sectors, lba, count);
    if (!this.throttleWrites) return this.#backend.write(lba, data);
    await Promise.all([this.#backend.write(lba, data), this.link.transfer(data.length, "write")]);
  }

  flush(): Promise<void> {
    return this.#backend.flush();
  }
}
