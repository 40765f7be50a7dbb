import { fileURLToPath } from "node:url";
import { BlockError, type BlockSource } from "../block/types.ts";
import { FileSource } from "./file.ts";
import { type HttpOptions, HttpSource } from "./http.ts";
import { type NbdOptions, NbdSource } from "./nbd.ts";

/** Options for any kind of source; each kind uses the ones that apply to it. */
export interface OpenSourceOptions extends NbdOptions, HttpOptions {}

const SCHEME = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//;

/**
 * Opens an image source from a path or URL:
 *   /path/disk.img, ./disk.img, file:///path/disk.img   a local raw image
 *   nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH   an NBD export
 *   http://..., https://...                              an image file on a web server (Range requests)
 */
export async function openSource(spec: string, options: OpenSourceOptions = {}): Promise<BlockSource> {
  if (spec === "") throw new BlockError("no image source given", "config");
  const scheme = SCHEME.exec(spec)?.[1]?.toLowerCase();
  switch (scheme) {
    case undefined:
      return FileSource.open(spec, { clock: options.clock });
    case "file": {
      let path: string;
      try {
        path = fileURLToPath(spec);
      } catch (error) {
        throw new BlockError(`${spec}: not a usable file:// URL`, "config", { cause: error });
      }
      return FileSource.open(path, { clock: options.clock });
    }
    case "nbd":
    case "nbd+unix":
    case "nbds":
    case "nbds+unix":
      return NbdSource.open(spec, options);
    case "http":
    case "https":
      return HttpSource.open(spec, options);
    default:
      throw new BlockError(
        `${spec}: unsupported image source scheme "${scheme}://" ` +
          "(use a path, file://, nbd://, nbd+unix://, http:// or https://)",
        "config",
      );
  }
}
