/**
 * A writer for the "newc" cpio format the Linux kernel unpacks as its initramfs. Written in TS so that
 * building the guest needs no cpio binary and no root privileges (device nodes are plain entries).
 */

export type CpioEntry =
  | { readonly kind: "dir"; readonly path: string; readonly mode?: number }
  | { readonly kind: "file"; readonly path: string; readonly data: Uint8Array; readonly mode?: number }
  | { readonly kind: "symlink"; readonly path: string; readonly target: string }
  | {
      readonly kind: "chardev" | "blockdev";
      readonly path: string;
      readonly major: number;
      readonly minor: number;
      readonly mode?: number;
    };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Serialise `entries` (paths without a leading slash) into an uncompressed newc archive. */
export function writeCpio(entries: readonly CpioEntry[], mtime = 0): Uint8Array {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const push = (bytes: Uint8Array): void => {
    chunks.push(bytes);
    total += bytes.length;
  };
  const enc = new TextEncoder();
  let ino = 1;
  const emit = (name: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0): void => {
    const nameBytes = enc.encode(`${name}\0`);
    const nlink = (mode & 0o170000) === S_IFDIR ? 2 : 1;
    const header =
      "070701" +
      hex8(ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(mtime) +
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rdevMajor) +
      hex8(rdevMinor) +
      hex8(nameBytes.length) +
      hex8(0); // check
    push(enc.encode(header));
    push(nameBytes);
    push(new Uint8Array(pad4(110 + nameBytes.length)));
    push(data);
    push(new Uint8Array(pad4(data.length)));
  };
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, "");
    switch (e.kind) {
      case "dir":
        emit(path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array(0));
        break;
      case "file":
        emit(path, S_IFREG | (e.mode ?? 0o644), e.data);
        break;
      case "symlink":
        emit(path, S_IFLNK | 0o777, enc.encode(e.target));
        break;
      case "chardev":
      case "blockdev":
        emit(
          path,
          (e.kind === "chardev" ? S_IFCHR : S_IFBLK) | (e.mode ?? 0o600),
          new Uint8Array(0),
          e.major,
          e.minor,
        );
        break;
    }
  }
  ino = 0;
  emit("TRAILER!!!", 0, new Uint8Array(0));
  // The kernel does not need it, but archives are customarily padded to 512 bytes.
  push(new Uint8Array((512 - (total % 512)) % 512));
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}
