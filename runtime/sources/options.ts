import type { Clock } from "../vmx/clock.ts";

/** What a remote source reports while it recovers from trouble (for logs; never needed for correctness). */
export type SourceEvent =
  | {
      /** A read (or part of one) failed and is tried again after `delayMs`. */
      kind: "retry";
      source: string;
      lba: number;
      count: number;
      /** 1 for the first retry. */
      attempt: number;
      delayMs: number;
      error: Error;
    }
  | {
      /** A request got no reply in time; it is abandoned (and retried while retries remain). */
      kind: "timeout";
      source: string;
      lba: number;
      count: number;
      timeoutMs: number;
    }
  | {
      /** The connection was lost; a new one is tried after `delayMs`. */
      kind: "reconnecting";
      source: string;
      /** 1 for the first attempt of this outage. */
      attempt: number;
      delayMs: number;
      error: Error;
    }
  | {
      /** A new connection is up; requests that were in flight are issued again on it. */
      kind: "reconnected";
      source: string;
      attempts: number;
      /** Requests that were re-issued on the new connection. */
      reissued: number;
    };

/** Options shared by every remote source; each has a sensible default. */
export interface SourceOptions {
  /** Per-request timeout in ms (a request with no complete reply by then is retried). Default 30 000. */
  timeoutMs?: number;
  /** Timeout for connecting and the protocol handshake, in ms. Default 10 000. */
  connectTimeoutMs?: number;
  /** How many times a failed request (server error, timeout, short body) is retried. Default 4. */
  retries?: number;
  /** First retry / reconnect delay in ms, doubled each time. Default 100. */
  retryDelayMs?: number;
  /** Ceiling of the retry / reconnect delay in ms. Default 5 000. */
  maxRetryDelayMs?: number;
  /** How many connection attempts are made after a connection is lost (or at open). Default 8. */
  reconnectAttempts?: number;
  /** Requests in flight at once (NBD pipelining depth, concurrent HTTP ranges). Default 16 (NBD), 4 (HTTP). */
  maxInFlight?: number;
  /**
   * Largest single request in bytes (a multiple of 512); bigger reads are split and the pieces
   * go out in parallel. Default 1 MiB for NBD (never above the server's maximum payload), 4 MiB for HTTP.
   */
  maxRequestBytes?: number;
  /** Told about retries, timeouts and reconnects, for logging. */
  onEvent?: (event: SourceEvent) => void;
  /** On a virtual clock, reads are tracked so simulated time does not run ahead of real I/O. */
  clock?: Clock;
}

export interface ResolvedSourceOptions {
  timeoutMs: number;
  connectTimeoutMs: number;
  retries: number;
  retryDelayMs: number;
  maxRetryDelayMs: number;
  reconnectAttempts: number;
  maxInFlight: number;
  maxRequestBytes: number;
  onEvent: (event: SourceEvent) => void;
  clock: Clock | undefined;
}

export function resolveOptions(
  options: SourceOptions,
  defaults: { maxInFlight: number; maxRequestBytes: number },
): ResolvedSourceOptions {
  const positive = (name: string, value: number | undefined, fallback: number, min: number): number => {
    const v = value ?? fallback;
    if (!Number.isFinite(v) || v < min)
      throw new RangeError(`source option ${name}=${v} must be a number >= ${min}`);
    return v;
  };
  const maxRequestBytes = positive("maxRequestBytes", options.maxRequestBytes, defaults.maxRequestBytes, 512);
  if (maxRequestBytes % 512 !== 0)
    throw new RangeError(`maxRequestBytes=${maxRequestBytes} is not a multiple of 512`);
  return {
    timeoutMs: positive("timeoutMs", options.timeoutMs, 30_000, 1),
    connectTimeoutMs: positive("connectTimeoutMs", options.connectTimeoutMs, 10_000, 1),
    retries: Math.floor(positive("retries", options.retries, 4, 0)),
    retryDelayMs: positive("retryDelayMs", options.retryDelayMs, 100, 0),
    maxRetryDelayMs: positive("maxRetryDelayMs", options.maxRetryDelayMs, 5_000, 0),
    reconnectAttempts: Math.floor(positive("reconnectAttempts", options.reconnectAttempts, 8, 0)),
    maxInFlight: Math.floor(positive("maxInFlight", options.maxInFlight, defaults.maxInFlight, 1)),
    maxRequestBytes,
    onEvent: options.onEvent ?? (() => {}),
    clock: options.clock,
  };
}

/** Exponential backoff: base * 2^(attempt-1), capped, with +-20% jitter so clients do not stampede. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number): number {
  const raw = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(raw * (0.8 + 0.4 * Math.random()));
}

/** A sleep that close() can cut short. */
export class Sleeper {
  readonly #timers = new Map<ReturnType<typeof setTimeout>, () => void>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, ms);
      this.#timers.set(timer, resolve);
    });
  }

  /** Schedules `fn` (cancelled by cancelAll). */
  later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    this.#timers.set(timer, () => {});
  }

  /** Wakes every sleeper now (they must check for closure) and drops scheduled callbacks. */
  cancelAll(): void {
    for (const [timer, wake] of this.#timers) {
      clearTimeout(timer);
      wake();
    }
    this.#timers.clear();
  }
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code !== undefined && !error.message.includes(code) ? `${error.message} (${code})` : error.message;
  }
  return String(error);
}

export function sectorSpan(lba: number, count: number): string {
  return `sectors ${lba}..${lba + count - 1} (${count} sectors)`;
}
