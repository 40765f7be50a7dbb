export { FileSource, type FileSourceOptions } from "./file.ts";
export { type HttpOptions, HttpSource, type HttpStats, type HttpValidator, openHttp } from "./http.ts";
export {
  type BuildManifestOptions,
  blockCount,
  blockDigest,
  blockSpan,
  buildManifest,
  type Manifest,
  parseManifest,
  serializeManifest,
  verifyBlock,
} from "./manifest.ts";
export {
  NBD_DEFAULT_PORT,
  type NbdExportInfo,
  type NbdOptions,
  NbdSource,
  type NbdStats,
  type NbdTarget,
  nbdInfo,
  openNbd,
  parseNbdUrl,
} from "./nbd.ts";
export { type OpenSourceOptions, openSource } from "./open.ts";
export type { SourceEvent, SourceOptions } from "./options.ts";
