import { TimerHeap } from "./timer-heap.ts";

/**
 * Time as the machine sees it. Real time by default; a virtual clock lets a scenario at the
 * paper's scale (32 GiB over 1 Gbit/s) run in seconds while every component still "waits".
 */
export interface Clock {
  /** Milliseconds since the clock was created. */
  now(): number;
  /** Resolves after `ms` milliseconds of this clock's time. */
  sleep(ms: number): Promise<void>;
  /** True when time only advances as the simulation decides (see VirtualClock). */
  readonly virtual: boolean;
}

/** A clock that can be told about real asynchronous work, so it does not run ahead of it. */
export interface TrackingClock extends Clock {
  track<T>(work: Promise<T>): Promise<T>;
}

/**
 * Marks real I/O (file reads, sockets) on clocks that care: on a VirtualClock, time must not
 * jump while the I/O is in flight. On any other clock (or none) this is the identity.
 */
export function trackIo<T>(clock: Clock | undefined, work: Promise<T>): Promise<T> {
  if (clock !== undefined && typeof (clock as Partial<TrackingClock>).track === "function") {
    return (clock as TrackingClock).track(work);
  }
  return work;
}

/** NaN and negative sleeps mean "just yield", as with setTimeout. */
function waitFor(ms: number): number {
  return Number.isNaN(ms) ? 0 : Math.max(ms, 0);
}

const MAX_TIMEOUT = 2 ** 31 - 1;

/** Wall-clock time from performance.now(). */
export class RealClock implements Clock {
  readonly virtual = false;
  readonly #origin = performance.now();

  now(): number {
    return performance.now() - this.#origin;
  }

  /**
   * setTimeout only has millisecond granularity and costs at least 1 ms, which would make
   * 100k tiny sleeps take 100 s; the sub-millisecond remainder is waited out on setImmediate
   * (yielding to I/O every turn) instead.
   */
  sleep(ms: number): Promise<void> {
    const deadline = this.now() + waitFor(ms);
    return new Promise((resolve) => {
      const check = (): void => {
        const left = deadline - this.now();
        // Clamped: Node turns longer timeouts into 1 ms ones.
        if (left >= 1) setTimeout(check, Math.min(Math.floor(left), MAX_TIMEOUT));
        else if (left > 0) setImmediate(check);
        else resolve();
      };
      // Always resolve on a later turn, even for sleep(0), like a real timer.
      if (deadline - this.now() >= 1) check();
      else setImmediate(check);
    });
  }
}

export interface VirtualClockOptions {
  /** Initial time in milliseconds (default 0). */
  start?: number;
  /**
   * How many consecutive idle setImmediate turns mean "everyone is waiting on the clock"
   * (default 2: microtasks have drained, and code woken by a timer may still pass through two
   * setImmediate hops before it sleeps again without time moving on under it).
   */
  quietTurns?: number;
}

/**
 * Discrete-event time: sleeps are timers in a heap, and time jumps straight to the next timer
 * once the process has nothing else to do. "Nothing else" means: a few consecutive
 * setImmediate turns passed with no timer scheduled or fired (so microtasks and short
 * setImmediate chains have drained), and no tracked real I/O is in flight (see track()).
 * Same-time timers fire in the order they were scheduled, and time never goes backwards, so a
 * scenario replays with identical virtual times. The pump only runs while timers are pending,
 * so a finished simulation does not keep Node alive.
 */
export class VirtualClock implements TrackingClock {
  readonly virtual = true;
  readonly #heap = new TimerHeap();
  readonly #quietTurns: number;
  #now: number;
  #seq = 0;
  #tracked = 0;
  #quiet = 0;
  #active = false;
  #scheduled = false;

  constructor(options: VirtualClockOptions = {}) {
    this.#now = options.start ?? 0;
    this.#quietTurns = Math.max(1, options.quietTurns ?? 2);
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number): Promise<void> {
    const delay = waitFor(ms);
    if (delay === Number.POSITIVE_INFINITY) {
      return Promise.reject(new RangeError("VirtualClock: an infinite sleep would stall the simulation"));
    }
    return new Promise((resolve) => {
      this.#heap.push(this.#now + delay, this.#seq++, resolve);
      this.#activity();
    });
  }

  /** Holds virtual time still until `work` settles; returns `work` itself. */
  track<T>(work: Promise<T>): Promise<T> {
    this.#tracked++;
    this.#activity();
    const settle = (): void => {
      this.#tracked--;
      this.#activity();
    };
    work.then(settle, settle);
    return work;
  }

  /** Runs a scenario; virtual time advances as it sleeps. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    return await fn();
  }

  /** Timers not yet fired (for tests and diagnostics). */
  get pendingTimers(): number {
    return this.#heap.size;
  }

  /** Tracked operations still in flight. */
  get pendingTracked(): number {
    return this.#tracked;
  }

  #activity(): void {
    this.#active = true;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled || this.#heap.size === 0) return;
    this.#scheduled = true;
    setImmediate(this.#pump);
  }

  readonly #pump = (): void => {
    this.#scheduled = false;
    if (this.#heap.size === 0) return; // nothing to advance to: stop, the next sleep restarts us
    if (this.#active) {
      this.#active = false;
      this.#quiet = 0;
    } else if (this.#tracked > 0) {
      // Real I/O in flight: wait without spinning, its settlement restarts the pump.
      this.#quiet = 0;
      return;
    } else if (++this.#quiet >= this.#quietTurns) {
      this.#quiet = 0;
      this.#fireNext();
    }
    this.#schedule();
  };

  /** Advances to the earliest timer and fires every timer due at that time, in FIFO order. */
  #fireNext(): void {
    const time = this.#heap.peekTime();
    if (time > this.#now) this.#now = time;
    while (this.#heap.size > 0 && this.#heap.peekTime() <= this.#now) this.#heap.pop()!();
    this.#active = true;
  }
}
