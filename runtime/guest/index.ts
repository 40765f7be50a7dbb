export { GuestAllocator } from "./allocator.ts";
export { CowDisk } from "./cow.ts";
export {
  AhciCommandError,
  AhciDriverError,
  AhciGuestDriver,
  type AhciGuestDriverOptions,
  type CommandFailure,
  type Consumer,
  DEFAULT_PORT_IE,
  type DriverStats,
  type GuestPlatform,
  MAX_COMMAND_SECTORS,
  MAX_PRD_BYTES,
  MAX_PRDT_ENTRIES,
  type Producer,
} from "./driver.ts";
export { ataString, type DiskIdentity, parseIdentify } from "./identify.ts";
export {
  type BlockRecord,
  type BootReplayOptions,
  type BootReplayStats,
  bootReplay,
  type LatencySummary,
  loadBlockTrace,
  mulberry32,
  parseBlockTrace,
  type RandomOptions,
  type ReplayedRequest,
  random,
  type SequentialOptions,
  sequential,
  summarize,
  type Verify,
  type WorkloadStats,
} from "./workloads.ts";
