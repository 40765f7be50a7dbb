/**
 * Parser of the guest-trace format (../shared/formats/guest-trace.md): JSON Lines, first line
 * the machine, then operations. Every problem is a TraceError with the line number; nothing in
 * a trace can make the parser throw anything else.
 */

export interface TraceMachine {
  readonly ramMiB: number;
  readonly abar: number;
  readonly diskSectors: number;
  readonly diskPattern: "lba" | "zero";
}

export type AccessSize = 1 | 2 | 4 | 8;

export type TraceOp =
  | {
      readonly op: "mmio_write";
      readonly line: number;
      readonly addr: number;
      readonly size: AccessSize;
      readonly value: bigint;
    }
  | {
      readonly op: "mmio_read";
      readonly line: number;
      readonly addr: number;
      readonly size: AccessSize;
      readonly expect: bigint | null;
      readonly mask: bigint;
    }
  | { readonly op: "mem_write"; readonly line: number; readonly addr: number; readonly bytes: Uint8Array }
  | {
      readonly op: "mem_fill";
      readonly line: number;
      readonly addr: number;
      readonly len: number;
      readonly byte: number;
    }
  | { readonly op: "mem_expect"; readonly line: number; readonly addr: number; readonly check: ContentCheck }
  | {
      readonly op: "poll";
      readonly line: number;
      readonly addr: number;
      readonly size: AccessSize;
      readonly mask: bigint;
      readonly value: bigint;
      readonly maxMs: number;
    }
  | { readonly op: "settle"; readonly line: number; readonly maxMs: number }
  | { readonly op: "irq"; readonly line: number; readonly expect: boolean }
  | {
      readonly op: "disk_expect";
      readonly line: number;
      readonly lba: number;
      readonly count: number;
      readonly check: ContentCheck;
    }
  | { readonly op: "finish"; readonly line: number; readonly maxMs: number }
  | { readonly op: "comment"; readonly line: number; readonly text: string };

/** What a mem_expect or disk_expect compares: exact bytes, a digest, or the lba pattern. */
export type ContentCheck =
  | { readonly kind: "hex"; readonly bytes: Uint8Array }
  | { readonly kind: "sha256"; readonly length: number; readonly digest: string }
  | { readonly kind: "pattern"; readonly length: number; readonly lba: number };

export interface Trace {
  readonly name: string;
  readonly device: string;
  readonly machine: TraceMachine;
  readonly ops: readonly TraceOp[];
}

export class TraceError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(message);
    this.name = "TraceError";
  }
}

const DEFAULTS: TraceMachine = { ramMiB: 64, abar: 0xfebf0000, diskSectors: 65536, diskPattern: "lba" };
const OPS = new Set([
  "mmio_write",
  "mmio_read",
  "mem_write",
  "mem_fill",
  "mem_expect",
  "poll",
  "settle",
  "irq",
  "disk_expect",
  "finish",
  "comment",
]);

export function parseTrace(text: string, fileName: string): Trace {
  const lines = text.split(/\r?\n/);
  let header: Record<string, unknown> | null = null;
  let headerLine = 0;
  const ops: TraceOp[] = [];
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === "") continue;
    const line = i + 1;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (error) {
      throw new TraceError(
        line,
        `not valid JSON (${error instanceof Error ? error.message : String(error)})`,
      );
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new TraceError(line, "each line must be a JSON object");
    }
    const record = value as Record<string, unknown>;
    if (header === null && ops.length === 0 && !("op" in record)) {
      header = record;
      headerLine = line;
      continue;
    }
    ops.push(parseOp(record, line));
  }
  const base = fileName.replace(/^.*[\\/]/, "").replace(/(\.trace)?\.jsonl$/, "");
  const machine = header === null ? DEFAULTS : parseMachine(header, headerLine);
  const name = header && typeof header.trace === "string" ? header.trace : base;
  const device = header && typeof header.device === "string" ? header.device : "ahci";
  if (device !== "ahci") throw new TraceError(headerLine, `device '${device}' is not supported (only ahci)`);
  return { name, device, machine, ops };
}

function parseMachine(header: Record<string, unknown>, line: number): TraceMachine {
  const m = header.machine;
  if (m === undefined) return DEFAULTS;
  if (typeof m !== "object" || m === null || Array.isArray(m))
    throw new TraceError(line, "'machine' must be an object");
  const fields = m as Record<string, unknown>;
  const pattern = fields.disk_pattern ?? DEFAULTS.diskPattern;
  if (pattern !== "lba" && pattern !== "zero")
    throw new TraceError(line, `disk_pattern must be "lba" or "zero", not ${JSON.stringify(pattern)}`);
  const ramMiB = optionalInt(fields, "ram_mib", line, DEFAULTS.ramMiB);
  if (ramMiB < 1 || ramMiB > 4096) throw new TraceError(line, `ram_mib ${ramMiB} is out of range (1..4096)`);
  const diskSectors = optionalInt(fields, "disk_sectors", line, DEFAULTS.diskSectors);
  if (diskSectors < 1) throw new TraceError(line, "disk_sectors must be at least 1");
  return {
    ramMiB,
    abar: optionalInt(fields, "abar", line, DEFAULTS.abar),
    diskSectors,
    diskPattern: pattern,
  };
}

function parseOp(r: Record<string, unknown>, line: number): TraceOp {
  const op = r.op;
  if (typeof op !== "string") throw new TraceError(line, "missing 'op'");
  if (!OPS.has(op)) throw new TraceError(line, `unknown op '${op}'`);
  switch (op) {
    case "mmio_write": {
      const size = accessSize(r, line);
      return {
        op,
        line,
        addr: int(r, "addr", line),
        size,
        value: fitting(big(r, "value", line), size, "value", line),
      };
    }
    case "mmio_read": {
      const size = accessSize(r, line);
      const all = (1n << BigInt(size * 8)) - 1n;
      const expect = r.expect === undefined ? null : big(r, "expect", line);
      const mask = r.mask === undefined ? all : big(r, "mask", line) & all;
      return { op, line, addr: int(r, "addr", line), size, expect, mask };
    }
    case "mem_write":
      return { op, line, addr: int(r, "addr", line), bytes: hexBytes(r, "hex", line) };
    case "mem_fill": {
      const byte = int(r, "byte", line);
      if (byte > 0xff) throw new TraceError(line, "'byte' must be 0..255");
      return { op, line, addr: int(r, "addr", line), len: int(r, "len", line), byte };
    }
    case "mem_expect":
      return { op, line, addr: int(r, "addr", line), check: contentCheck(r, line, null) };
    case "poll": {
      const size = accessSize(r, line);
      return {
        op,
        line,
        addr: int(r, "addr", line),
        size,
        mask: big(r, "mask", line),
        value: big(r, "value", line),
        maxMs: optionalInt(r, "max_ms", line, 5000),
      };
    }
    case "settle":
      return { op, line, maxMs: optionalInt(r, "max_ms", line, 5000) };
    case "irq":
      if (typeof r.expect !== "boolean") throw new TraceError(line, "irq needs 'expect': true or false");
      return { op, line, expect: r.expect };
    case "disk_expect": {
      const count = int(r, "count", line);
      return { op, line, lba: int(r, "lba", line), count, check: contentCheck(r, line, count * 512) };
    }
    case "finish":
      return { op, line, maxMs: optionalInt(r, "max_ms", line, 600_000) };
    default:
      return { op: "comment", line, text: typeof r.text === "string" ? r.text : "" };
  }
}

function contentCheck(r: Record<string, unknown>, line: number, impliedLength: number | null): ContentCheck {
  const length = () => (impliedLength !== null ? impliedLength : int(r, "len", line));
  if (r.hex !== undefined) {
    const bytes = hexBytes(r, "hex", line);
    if (impliedLength !== null && bytes.length !== impliedLength) {
      throw new TraceError(line, `'hex' has ${bytes.length} bytes but count covers ${impliedLength}`);
    }
    return { kind: "hex", bytes };
  }
  if (r.sha256 !== undefined) {
    if (typeof r.sha256 !== "string" || !/^[0-9a-fA-F]{64}$/.test(r.sha256)) {
      throw new TraceError(line, "'sha256' must be 64 hex digits");
    }
    return { kind: "sha256", length: length(), digest: r.sha256.toLowerCase() };
  }
  if (r.pattern !== undefined) {
    if (r.pattern !== "lba")
      throw new TraceError(line, `unknown pattern ${JSON.stringify(r.pattern)} (only "lba")`);
    const lba = r.lba === undefined && impliedLength !== null ? int(r, "lba", line) : int(r, "lba", line);
    return { kind: "pattern", length: length(), lba };
  }
  throw new TraceError(line, "needs one of 'hex', 'sha256' (with length) or 'pattern'");
}

function accessSize(r: Record<string, unknown>, line: number): AccessSize {
  const size = r.size === undefined ? 4 : int(r, "size", line);
  if (size !== 1 && size !== 2 && size !== 4 && size !== 8)
    throw new TraceError(line, `size must be 1, 2, 4 or 8, not ${size}`);
  return size;
}

function fitting(value: bigint, size: AccessSize, key: string, line: number): bigint {
  if (value >= 1n << BigInt(size * 8)) throw new TraceError(line, `'${key}' does not fit in ${size} bytes`);
  return value;
}

function big(r: Record<string, unknown>, key: string, line: number): bigint {
  const v = r[key];
  if (v === undefined) throw new TraceError(line, `missing '${key}'`);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new TraceError(line, `'${key}' must be a non-negative integer`);
    return BigInt(v);
  }
  if (typeof v === "string" && /^0x[0-9a-fA-F]+$/.test(v)) {
    if (v.length > 18) throw new TraceError(line, `'${key}' is wider than 64 bits`);
    return BigInt(v);
  }
  if (typeof v === "string" && /^[0-9]+$/.test(v)) return BigInt(v);
  throw new TraceError(line, `'${key}' must be a number or a 0x hex string, not ${JSON.stringify(v)}`);
}

function int(r: Record<string, unknown>, key: string, line: number): number {
  const v = big(r, key, line);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TraceError(line, `'${key}' is too large`);
  return Number(v);
}

function optionalInt(r: Record<string, unknown>, key: string, line: number, fallback: number): number {
  return r[key] === undefined ? fallback : int(r, key, line);
}

function hexBytes(r: Record<string, unknown>, key: string, line: number): Uint8Array {
  const v = r[key];
  if (typeof v !== "string" || v.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(v)) {
    throw new TraceError(line, `'${key}' must be a string of hex digit pairs`);
  }
  return Uint8Array.from(Buffer.from(v, "hex"));
}
