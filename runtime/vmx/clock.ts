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
