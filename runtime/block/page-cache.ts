import { createRequire } from "node:module";

/**
 * Page-cache control for files medic writes in bulk, from native/page_cache.c (built by
 * `npm install`). Without the helper, `dropPages` is null and files keep their pages cached.
 */
interface NativeHelper {
  dropPages(fd: number, offset: number, length: number): Promise<void>;
}

function load(): NativeHelper | null {
  try {
    const helper = createRequire(import.meta.url)(
      "../../native/build/Release/medic_native.node",
    ) as NativeHelper;
    return typeof helper.dropPages === "function" ? helper : null;
  } catch {
    return null;
  }
}

const helper = load();

/**
 * Drops the clean cached pages of `length` bytes at `offset` of the open file `fd`
 * (posix_fadvise DONTNEED, on the thread pool). Null when the native helper is not built.
 */
export const dropPages: ((fd: number, offset: number, length: number) => Promise<void>) | null =
  helper === null ? null : (fd, offset, length) => helper.dropPages(fd, offset, length);
