export { FileBackend, type FileBackendOptions } from "./file.ts";
export { MemoryBackend } from "./memory.ts";
export {
  checkLbaPattern,
  checkPattern,
  fillLbaPattern,
  fillPattern,
  type PatternName,
  PatternSource,
} from "./pattern.ts";
export { SparseBackend } from "./sparse.ts";
export {
  Link,
  type LinkOptions,
  type LinkStats,
  megabits,
  ThrottledBackend,
  type ThrottledBackendOptions,
  ThrottledSource,
} from "./throttle.ts";
export { type BlockBackend, BlockError, type BlockSource, checkRange, SECTOR_SIZE } from "./types.ts";
