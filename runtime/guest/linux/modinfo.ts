/**
 * Reading the `.modinfo` section of Linux kernel modules (ELF32 or ELF64, little endian), to compute
 * the dependency closure without depmod: Debian's kernel package ships no modules.dep (depmod runs in
 * its postinst), so the builder reads each module's own `depends=` and `softdep=` strings.
 */

export interface ModInfo {
  readonly name?: string;
  readonly depends: readonly string[];
  /** Modules named by `softdep=pre: ...` (names or aliases, as the module wrote them). */
  readonly softPre: readonly string[];
  readonly fields: ReadonlyMap<string, readonly string[]>;
}

/** Parse the NUL-separated `key=value` strings of a module's `.modinfo` section. */
export function readModInfo(elf: Uint8Array): ModInfo {
  const section = findSection(elf, ".modinfo");
  const fields = new Map<string, string[]>();
  if (section) {
    const text = new TextDecoder("latin1").decode(section);
    for (const item of text.split("\0")) {
      const eq = item.indexOf("=");
      if (eq <= 0) continue;
      const key = item.slice(0, eq);
      const list = fields.get(key) ?? [];
      list.push(item.slice(eq + 1));
      fields.set(key, list);
    }
  }
  const depends = (fields.get("depends") ?? [])
    .flatMap((d) => d.split(","))
    .map((d) => d.trim())
    .filter((d) => d.length > 0);
  const softPre: string[] = [];
  for (const sd of fields.get("softdep") ?? []) {
    // e.g. "pre: crc32c" or "pre: a b post: c"
    const m = /pre:\s*([\s\S]*?)(?:post:|$)/.exec(sd);
    if (m?.[1]) softPre.push(...m[1].split(/\s+/).filter((s) => s.length > 0));
  }
  const name = fields.get("name")?.[0];
  return name === undefined ? { depends, softPre, fields } : { name, depends, softPre, fields };
}

function findSection(elf: Uint8Array, wanted: string): Uint8Array | undefined {
  if (elf.length < 0x34 || elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) {
    throw new Error("not an ELF file");
  }
  const is64 = elf[4] === 2;
  if (elf[5] !== 1) throw new Error("big-endian ELF is not supported");
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const shoff = is64 ? Number(dv.getBigUint64(0x28, true)) : dv.getUint32(0x20, true);
  const shentsize = dv.getUint16(is64 ? 0x3a : 0x2e, true);
  const shnum = dv.getUint16(is64 ? 0x3c : 0x30, true);
  const shstrndx = dv.getUint16(is64 ? 0x3e : 0x32, true);
  const sh = (i: number): { name: number; offset: number; size: number } => {
    const base = shoff + i * shentsize;
    if (is64) {
      return {
        name: dv.getUint32(base, true),
        offset: Number(dv.getBigUint64(base + 0x18, true)),
        size: Number(dv.getBigUint64(base + 0x20, true)),
      };
    }
    return {
      name: dv.getUint32(base, true),
      offset: dv.getUint32(base + 16, true),
      size: dv.getUint32(base + 20, true),
    };
  };
  const strtab = sh(shstrndx);
  const nameAt = (off: number): string => {
    let end = strtab.offset + off;
    while (end < elf.length && elf[end] !== 0) end++;
    return new TextDecoder("latin1").decode(elf.subarray(strtab.offset + off, end));
  };
  for (let i = 0; i < shnum; i++) {
    const s = sh(i);
    if (nameAt(s.name) === wanted) return elf.subarray(s.offset, s.offset + s.size);
  }
  return undefined;
}

/** Module names are compared with '-' and '_' treated alike, as the kernel does. */
export function normaliseModName(name: string): string {
  return name.replace(/-/g, "_");
}

/**
 * Dependency closure of `roots` in load order (every module after the modules it depends on).
 * `lookup(name)` returns the module's info, or undefined for a module that is built in / absent.
 */
export function moduleLoadOrder(
  roots: readonly string[],
  lookup: (name: string) => ModInfo | undefined,
): { order: string[]; missing: string[] } {
  const order: string[] = [];
  const missing: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (raw: string, chain: readonly string[]): void => {
    const name = normaliseModName(raw);
    const s = state.get(name);
    if (s === "done") return;
    if (s === "visiting") throw new Error(`module dependency cycle: ${[...chain, name].join(" -> ")}`);
    const info = lookup(name);
    if (!info) {
      state.set(name, "done");
      missing.push(name);
      return;
    }
    state.set(name, "visiting");
    for (const d of [...info.softPre, ...info.depends]) {
      // A soft dependency may name an alias (e.g. "crc32c"); only follow it when it is a module name.
      if (info.softPre.includes(d) && !lookup(normaliseModName(d))) continue;
      visit(d, [...chain, name]);
    }
    state.set(name, "done");
    order.push(name);
  };
  for (const r of roots) visit(r, []);
  return { order, missing };
}
