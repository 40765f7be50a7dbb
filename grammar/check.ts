/**
 * The checker: resolves every name of a parsed spec, computes offsets, masks, reset values and
 * widths, and produces the model of generator/model.ts. Every problem is a diagnostic pointing at
 * the offending token; checking goes on after an error so that one run reports them all, and the
 * model is returned only when there is no error. Declaration order does not matter.
 */

import type {
  AccessKind,
  BlockModel,
  CommandKind,
  CommandModel,
  CommandSetModel,
  CompletionModel,
  DeviceIdentity,
  DeviceModel,
  EnumModel,
  FieldModel,
  FieldPath,
  LinkModel,
  LinkSource,
  LinkTarget,
  MediatorModel,
  MemberModel,
  RegisterFieldRef,
  RegisterModel,
  RegisterRef,
  ScalarMember,
  StructModel,
  TrapModel,
  TrapRole,
  ValueModel,
  ValuePart,
} from "../generator/model.ts";
import type {
  BlockAst,
  CommandSetAst,
  DeviceAst,
  EnumAst,
  FieldAst,
  FlagAst,
  Ident,
  LinkAst,
  MediatorAst,
  MediatorItemAst,
  MemberAst,
  NumberLit,
  PathAst,
  RegisterAst,
  SpecAst,
  StructAst,
} from "./ast.ts";
import type { Diagnostic, SourceSpan } from "./diagnostics.ts";
import { hasErrors } from "./diagnostics.ts";

/** Mediator protocol families the generator knows. */
export const knownProtocols: readonly string[] = ["slots"];
export const commandKinds: readonly CommandKind[] = ["read", "write", "flush", "data_in", "nondata", "trim"];
export const trapRoles: readonly TrapRole[] = ["issue", "queue", "shadow", "reset", "engine"];
/** Largest number of instances of a repeated block. */
export const MAX_BLOCK_COUNT = 4096;
/** Widest assembled value: JavaScript numbers are exact to 53 bits. */
export const MAX_VALUE_BITS = 53;

export function checkSpec(
  ast: SpecAst,
  fileName: string,
): { model: DeviceModel | null; diagnostics: Diagnostic[] } {
  const checker = new Checker(ast, fileName);
  const model = checker.run();
  const diagnostics = checker.diagnostics
    .map((d, i) => ({ d, i }))
    .sort((a, b) => a.d.line - b.d.line || a.d.column - b.d.column || a.i - b.i)
    .map(({ d }) => d);
  return { model: hasErrors(diagnostics) ? null : model, diagnostics };
}

// --- helpers ---------------------------------------------------------------------------------

export function hex(n: number): string {
  return `0x${n.toString(16).toUpperCase()}`;
}

function bitsText(msb: number, lsb: number): string {
  return msb === lsb ? `[${msb}]` : `[${msb}:${lsb}]`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && 2 ** Math.round(Math.log2(n)) === n;
}

/** ((1 << width) - 1) << lsb, exact up to bit 52 and unsigned for 32-bit registers. */
function maskOf(msb: number, lsb: number): number {
  const mask = (2 ** (msb - lsb + 1) - 1) * 2 ** lsb;
  return mask <= 0xffffffff ? mask >>> 0 : mask;
}

/** Edit distance counting a swap of two neighbours as one edit (optimal string alignment). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/** "; did you mean 'X'?" when a candidate is close to `name` (edit distance or case). */
export function didYouMean(name: string, candidates: Iterable<string>): string {
  let best: string | null = null;
  let bestDistance = Number.POSITIVE_INFINITY;
  const limit = Math.max(1, Math.floor(name.length / 3));
  if (name.length > 64) return "";
  for (const candidate of candidates) {
    if (candidate === name || Math.abs(candidate.length - name.length) > limit) continue;
    const d = candidate.toLowerCase() === name.toLowerCase() ? 0 : editDistance(name, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best !== null && bestDistance <= limit && bestDistance < name.length
    ? `; did you mean '${best}'?`
    : "";
}

function pathText(path: PathAst): string {
  return path.parts.map((p) => p.text).join(".");
}

const scalarBytes: Record<string, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

type TopKind = "enum" | "block" | "struct" | "command set";

interface ContainerInfo {
  /** "register 'CAP'" or "member 'FLAGS'", for messages. */
  readonly what: string;
  readonly width: number;
  readonly access: AccessKind;
  readonly selfclear: boolean;
  readonly volatile: boolean;
}

/** A resolved register field reference with its models. */
interface RegisterHit {
  readonly block: BlockModel;
  readonly register: RegisterModel;
  readonly field: FieldModel | null;
}

class Checker {
  readonly diagnostics: Diagnostic[] = [];
  private readonly top = new Map<string, { kind: TopKind; span: SourceSpan }>();
  private readonly enums = new Map<string, EnumAst>();
  private readonly blocks = new Map<string, BlockAst>();
  private readonly structs = new Map<string, StructAst>();
  private readonly sets = new Map<string, CommandSetAst>();
  private readonly devices: DeviceAst[] = [];
  private readonly mediators: MediatorAst[] = [];
  private readonly links: LinkAst[] = [];

  private readonly enumModels = new Map<string, EnumModel>();
  private readonly blockModels = new Map<string, BlockModel>();
  private readonly structModels = new Map<string, StructModel>();
  private readonly setModels = new Map<string, CommandSetModel>();
  private readonly structSizes = new Map<string, number | null>();

  constructor(
    private readonly ast: SpecAst,
    private readonly file: string,
  ) {}

  private report(severity: "error" | "warning", span: SourceSpan, message: string): void {
    this.diagnostics.push({
      file: this.file,
      line: span.line,
      column: span.column,
      length: Math.max(1, span.length),
      severity,
      message,
    });
  }

  private error(span: SourceSpan, message: string): void {
    this.report("error", span, message);
  }

  private warn(span: SourceSpan, message: string): void {
    this.report("warning", span, message);
  }

  /** A top-level name of the wrong kind or unknown: the message for a failed lookup. */
  private unknown(kind: TopKind, name: Ident): void {
    const other = this.top.get(name.text);
    if (other !== undefined) {
      this.error(
        name.span,
        `'${name.text}' is ${article(other.kind)} ${other.kind}, not ${article(kind)} ${kind}`,
      );
      return;
    }
    const candidates = [...this.top].filter(([, v]) => v.kind === kind).map(([k]) => k);
    this.error(name.span, `unknown ${kind} '${name.text}'${didYouMean(name.text, candidates)}`);
  }

  // --- driver --------------------------------------------------------------------------------

  run(): DeviceModel | null {
    this.collect();
    for (const e of this.enums.values()) this.enumModels.set(e.name.text, this.checkEnum(e));
    this.checkStructCycles();
    for (const s of this.structs.values()) this.structModels.set(s.name.text, this.checkStruct(s));
    for (const b of this.blocks.values()) this.blockModels.set(b.name.text, this.checkBlock(b));
    const device = this.checkDevice();
    this.checkBlockLayout(device);
    const links = this.links.map((l) => this.checkLink(l));
    for (const s of this.sets.values()) this.setModels.set(s.name.text, this.checkCommandSet(s));
    const mediator = this.checkMediators();
    if (device === null) return null;
    return {
      source: this.file,
      name: device.ast.name.text,
      doc: device.ast.doc?.value ?? "",
      identity: device.identity,
      enums: [...this.enumModels.values()],
      blocks: [...this.blockModels.values()],
      structs: [...this.structModels.values()],
      links: links.filter((l): l is LinkModel => l !== null),
      commandSets: [...this.setModels.values()],
      mediator,
    };
  }

  private collect(): void {
    for (const d of this.ast.declarations) {
      switch (d.kind) {
        case "device":
          this.devices.push(d);
          break;
        case "mediator":
          this.mediators.push(d);
          break;
        case "link":
          this.links.push(d);
          break;
        case "enum":
          if (this.declare("enum", d.name)) this.enums.set(d.name.text, d);
          break;
        case "block":
          if (this.declare("block", d.name)) this.blocks.set(d.name.text, d);
          break;
        case "struct":
          if (this.declare("struct", d.name)) this.structs.set(d.name.text, d);
          break;
        case "commands":
          if (this.declare("command set", d.name)) this.sets.set(d.name.text, d);
          break;
      }
    }
  }

  private declare(kind: TopKind, name: Ident): boolean {
    const previous = this.top.get(name.text);
    if (previous !== undefined) {
      this.error(
        name.span,
        previous.kind === kind
          ? `duplicate ${kind} '${name.text}' (first declared on line ${previous.span.line})`
          : `'${name.text}' is already declared as ${article(previous.kind)} ${previous.kind} on line ${previous.span.line}`,
      );
      return false;
    }
    this.top.set(name.text, { kind, span: name.span });
    return true;
  }

  // --- device ----------------------------------------------------------------------------------

  private checkDevice(): { ast: DeviceAst; identity: DeviceIdentity } | null {
    const [device, ...more] = this.devices;
    for (const d of more) {
      this.error(
        d.name.span,
        `a spec has one 'device' declaration (the first is on line ${device!.name.span.line})`,
      );
    }
    if (device === undefined) {
      this.error(
        { line: 1, column: 1, length: 1 },
        "missing 'device' declaration: a spec starts with device NAME { vendor = ...; device = ...; }",
      );
      return null;
    }
    const props = new Map<string, NumberLit>();
    for (const p of device.properties) {
      const previous = props.get(p.key.text);
      if (previous !== undefined) {
        this.error(
          p.key.span,
          `duplicate device property '${p.key.text}' (first set on line ${previous.span.line})`,
        );
      } else props.set(p.key.text, p.value);
    }
    const limits: Record<string, number> = { vendor: 0xffff, device: 0xffff, class: 0xffffff, bar: 5 };
    for (const [key, max] of Object.entries(limits)) {
      const v = props.get(key);
      if (v !== undefined && v.value > max) {
        this.error(
          v.span,
          `device property '${key}' = ${v.text} is out of range (0 to ${max > 9 ? hex(max) : max})`,
        );
      }
    }
    for (const key of ["vendor", "device"]) {
      if (!props.has(key))
        this.error(device.name.span, `device '${device.name.text}' has no '${key}' property`);
    }
    const sector = props.get("sector");
    if (sector !== undefined && !isPowerOfTwo(sector.value)) {
      this.error(sector.span, `sector size ${sector.text} is not a power of two`);
    }
    const barSize = props.get("bar_size");
    if (barSize !== undefined && barSize.value === 0) this.error(barSize.span, "bar_size must be at least 1");
    const known = new Set(["vendor", "device", "class", "bar", "bar_size", "sector"]);
    const extra: Record<string, number> = {};
    for (const [k, v] of props) if (!known.has(k)) extra[k] = v.value;
    let extent = 0;
    for (const b of this.blockModels.values())
      extent = Math.max(extent, b.offset + (b.count - 1) * b.stride + b.size);
    return {
      ast: device,
      identity: {
        vendor: props.get("vendor")?.value ?? 0,
        device: props.get("device")?.value ?? 0,
        classCode: props.get("class")?.value ?? 0,
        bar: props.get("bar")?.value ?? 0,
        barSize: barSize?.value ?? extent,
        sectorSize: sector?.value ?? 512,
        extra,
      },
    };
  }

  // --- enums -----------------------------------------------------------------------------------

  private checkEnum(e: EnumAst): EnumModel {
    const seen = new Map<string, Ident>();
    const values = new Map<number, Ident>();
    const members = [];
    for (const m of e.members) {
      const previous = seen.get(m.name.text);
      if (previous !== undefined) {
        this.error(
          m.name.span,
          `duplicate member '${m.name.text}' in enum '${e.name.text}' (first declared on line ${previous.span.line})`,
        );
        continue;
      }
      seen.set(m.name.text, m.name);
      const same = values.get(m.value.value);
      if (same !== undefined) {
        this.warn(
          m.value.span,
          `'${m.name.text}' has the same value as '${same.text}' in enum '${e.name.text}'`,
        );
      } else values.set(m.value.value, m.name);
      members.push({ name: m.name.text, value: m.value.value, doc: m.doc?.value ?? "" });
    }
    if (e.members.length === 0) this.warn(e.name.span, `enum '${e.name.text}' has no members`);
    return { name: e.name.text, doc: e.doc?.value ?? "", members, span: e.name.span };
  }

  // --- fields (registers and struct members) ------------------------------------------------------

  private flagsOf(
    flags: readonly FlagAst[],
    what: string,
  ): { access: AccessKind | null; selfclear: boolean; volatile: boolean } {
    let access: AccessKind | null = null;
    let selfclear = false;
    let isVolatile = false;
    for (const f of flags) {
      if (f.kind === "selfclear" || f.kind === "volatile") {
        if ((f.kind === "selfclear" && selfclear) || (f.kind === "volatile" && isVolatile)) {
          this.warn(f.span, `'${f.kind}' is given twice for ${what}`);
        }
        if (f.kind === "selfclear") selfclear = true;
        else isVolatile = true;
      } else if (access !== null) {
        this.error(f.span, `${what} has two access kinds ('${access}' and '${f.kind}')`);
      } else access = f.kind;
    }
    return { access, selfclear, volatile: isVolatile };
  }

  private checkFields(fields: readonly FieldAst[], container: ContainerInfo): FieldModel[] {
    const out: FieldModel[] = [];
    const placedFields = new Set<FieldModel>();
    const seen = new Map<string, FieldAst>();
    for (const f of fields) {
      const name = f.name.text;
      const previous = seen.get(name);
      if (previous !== undefined) {
        this.error(
          f.name.span,
          `duplicate field '${name}' in ${container.what} (first declared on line ${previous.name.span.line})`,
        );
        continue;
      }
      seen.set(name, f);
      const msb = f.msb.value;
      const lsb = f.lsb?.value ?? msb;
      const bits = f.lsb === null ? `[${f.msb.text}]` : `[${f.msb.text}:${f.lsb.text}]`;
      let placed = true;
      if (msb < lsb) {
        this.error(f.bitsSpan, `field '${name}' ${bits}: the most significant bit comes first ([msb:lsb])`);
        placed = false;
      } else if (msb >= container.width) {
        this.error(
          f.bitsSpan,
          `field '${name}' ${bits} exceeds the ${container.width}-bit ${container.what}`,
        );
        placed = false;
      } else if (msb > 52) {
        this.error(f.bitsSpan, `field '${name}' ${bits}: bit fields must lie within bits 52:0`);
        placed = false;
      }
      const flags = this.flagsOf(f.flags, `field '${name}'`);
      const access = flags.access ?? container.access;
      const selfclear = flags.selfclear || container.selfclear;
      if (flags.selfclear && (access === "ro" || access === "rsvd")) {
        this.warn(f.name.span, `field '${name}' is ${access}: 'selfclear' has no effect`);
      }
      const width = placed ? msb - lsb + 1 : 1;
      const mask = placed ? maskOf(msb, lsb) : 0;

      let enumName: string | null = null;
      for (const [i, e] of f.enums.entries()) {
        if (i > 0) {
          this.error(e.span, `field '${name}' has more than one enum`);
          continue;
        }
        const model = this.enumModels.get(e.text);
        if (model === undefined) {
          this.unknown("enum", e);
          continue;
        }
        enumName = model.name;
        const wide = model.members.filter((m) => m.value >= 2 ** width);
        if (placed && wide.length > 0) {
          const list = wide.map((m) => `${m.name} = ${m.value}`).join(", ");
          this.error(e.span, `enum '${model.name}' does not fit the ${width}-bit field '${name}': ${list}`);
        }
      }

      let reset = 0;
      if (f.reset !== null) {
        reset = f.reset.value;
        if (placed && reset >= 2 ** width) {
          this.error(
            f.reset.span,
            `reset value ${f.reset.text} does not fit the ${width}-bit field '${name}' (maximum ${hex(2 ** width - 1)})`,
          );
          reset = 0;
        }
      }

      if (placed) {
        const other = out.find((o) => placedFields.has(o) && lsb <= o.msb && o.lsb <= msb);
        if (other !== undefined) {
          this.error(
            f.bitsSpan,
            `field '${name}' ${bitsText(msb, lsb)} overlaps field '${other.name}' ${bitsText(other.msb, other.lsb)}`,
          );
          placed = false;
        }
      }
      const model: FieldModel = {
        name,
        doc: f.doc?.value ?? "",
        msb: placed ? msb : 0,
        lsb: placed ? lsb : 0,
        width,
        mask,
        access,
        reset,
        selfclear,
        volatile: flags.volatile || container.volatile,
        enumName,
        span: f.name.span,
      };
      out.push(model);
      if (placed) placedFields.add(model);
    }
    return out;
  }

  // --- blocks and registers ----------------------------------------------------------------------

  private checkBlock(b: BlockAst): BlockModel {
    const name = b.name.text;
    let count = b.count?.value ?? 1;
    if (b.count !== null && count < 1) {
      this.error(b.count.span, `block '${name}' must be repeated at least once`);
      count = 1;
    } else if (count > MAX_BLOCK_COUNT) {
      this.error(b.count!.span, `block '${name}' is repeated ${count} times; the most is ${MAX_BLOCK_COUNT}`);
      count = 1;
    }
    for (const extra of b.sizes.slice(1)) this.error(extra.span, `block '${name}' has more than one 'size'`);
    for (const extra of b.strides.slice(1))
      this.error(extra.span, `block '${name}' has more than one 'stride'`);

    const registers: RegisterModel[] = [];
    const seen = new Map<string, RegisterAst>();
    for (const r of b.registers) {
      const previous = seen.get(r.name.text);
      if (previous !== undefined) {
        this.error(
          r.name.span,
          `duplicate register '${r.name.text}' in block '${name}' (first declared on line ${previous.name.span.line})`,
        );
        continue;
      }
      seen.set(r.name.text, r);
      const model = this.checkRegister(r);
      if (model !== null) registers.push(model);
    }

    let extent = 0;
    for (const r of registers) extent = Math.max(extent, r.offset + r.width / 8);
    let size = b.sizes[0]?.value ?? extent;
    if (b.sizes[0] !== undefined && size === 0) {
      this.error(b.sizes[0].span, `block '${name}' has size 0`);
      size = 1;
    } else if (size === 0) {
      this.error(b.name.span, `block '${name}' has neither registers nor a size`);
      size = 1;
    }
    const stride = b.strides[0]?.value ?? size;
    if (count > 1 && stride < size) {
      this.error(
        b.strides[0]!.span,
        `stride ${b.strides[0]!.text} of block '${name}' is smaller than its size ${hex(size)}: the copies would overlap`,
      );
    }

    // Registers inside the block: within its size, no two sharing a byte.
    const placed: RegisterModel[] = [];
    for (const r of registers) {
      const bytes = r.width / 8;
      if (b.sizes[0] !== undefined && r.offset + bytes > size) {
        this.error(
          r.span,
          `register '${r.name}' at ${hex(r.offset)} (${bytes} bytes) exceeds block '${name}' of size ${hex(size)}`,
        );
        continue;
      }
      const other = placed.find((o) => r.offset < o.offset + o.width / 8 && o.offset < r.offset + bytes);
      if (other !== undefined) {
        this.error(
          r.span,
          `register '${r.name}' at ${hex(r.offset)} overlaps register '${other.name}' at ${hex(other.offset)}`,
        );
        continue;
      }
      placed.push(r);
    }

    return {
      name,
      doc: b.doc?.value ?? "",
      offset: b.offset.value,
      size,
      count,
      stride: stride === 0 ? size : stride,
      registers,
      span: b.name.span,
    };
  }

  private checkRegister(r: RegisterAst): RegisterModel | null {
    const name = r.name.text;
    let width = r.width?.value ?? 32;
    if (r.width !== null && ![8, 16, 32].includes(width)) {
      this.error(
        r.width.span,
        width === 64
          ? `register '${name}': 64-bit registers are not supported; declare two 32-bit registers (low and high)`
          : `register '${name}' has width ${r.width.text}; the width is 8, 16 or 32`,
      );
      width = 32;
    }
    const bytes = width / 8;
    if (r.offset.value % bytes !== 0) {
      this.error(
        r.offset.span,
        `register '${name}' at ${r.offset.text} is not aligned to its width (${bytes} bytes)`,
      );
    }
    const flags = this.flagsOf(r.flags, `register '${name}'`);
    const fields = this.checkFields(r.fields, {
      what: `register '${name}'`,
      width,
      access: flags.access ?? "rw",
      selfclear: flags.selfclear,
      volatile: flags.volatile,
    });
    const all = width === 32 ? 0xffffffff : 2 ** width - 1;

    let resolvedFields = fields;
    if (r.reset !== null) {
      const value = r.reset.value;
      if (value > all) {
        this.error(
          r.reset.span,
          `reset value ${r.reset.text} does not fit the ${width}-bit register '${name}'`,
        );
      } else {
        resolvedFields = fields.map((f, i) => {
          const fromRegister = Math.floor(value / 2 ** f.lsb) % 2 ** f.width;
          const explicit = r.fields.find((fa) => fa.name.text === f.name)?.reset;
          if (explicit != null && explicit.value !== fromRegister) {
            this.error(
              explicit.span,
              `reset value ${explicit.text} of field '${f.name}' contradicts the register reset ${r.reset!.text}`,
            );
          }
          void i;
          return { ...f, reset: fromRegister };
        });
        let covered = 0;
        for (const f of fields) covered = (covered | f.mask) >>> 0;
        const stray = (value & ~covered) >>> 0;
        if (stray !== 0) {
          this.warn(
            r.reset.span,
            `reset value ${r.reset.text} of register '${name}' sets bits ${hex(stray)} that no field holds`,
          );
        }
      }
    }

    const masks = { ro: 0, rw: 0, w1c: 0, w1s: 0, wo: 0, reserved: 0, selfclear: 0 };
    let covered = 0;
    let reset = 0;
    for (const f of resolvedFields) {
      covered = (covered | f.mask) >>> 0;
      if (f.access === "rsvd") masks.reserved = (masks.reserved | f.mask) >>> 0;
      else masks[f.access] = (masks[f.access] | f.mask) >>> 0;
      if (f.selfclear) masks.selfclear = (masks.selfclear | f.mask) >>> 0;
      reset = (reset | (f.reset * 2 ** f.lsb)) >>> 0;
    }
    masks.reserved = (masks.reserved | (all & ~covered)) >>> 0;
    if (r.fields.length === 0)
      this.warn(r.name.span, `register '${name}' has no fields: all its bits are reserved`);

    return {
      name,
      doc: r.doc?.value ?? "",
      offset: r.offset.value,
      width,
      reset,
      volatile: flags.volatile || resolvedFields.some((f) => f.volatile),
      fields: resolvedFields,
      masks,
      span: r.name.span,
    };
  }

  /** Blocks in the BAR: copies of different blocks never share a byte, all within bar_size. */
  private checkBlockLayout(device: { ast: DeviceAst; identity: DeviceIdentity } | null): void {
    interface Copy {
      block: BlockModel;
      index: number;
      start: number;
      end: number;
    }
    const copies: Copy[] = [];
    for (const b of this.blockModels.values()) {
      for (let i = 0; i < b.count; i++) {
        const start = b.offset + i * b.stride;
        copies.push({ block: b, index: i, start, end: start + b.size });
      }
    }
    copies.sort((a, b) => a.start - b.start || a.end - b.end);
    const reported = new Set<string>();
    let reach: Copy | null = null;
    for (const c of copies) {
      if (reach !== null && c.start < reach.end && reach.block !== c.block) {
        const [first, second] = reach.block.span.line <= c.block.span.line ? [reach, c] : [c, reach];
        const key = `${first.block.name}/${second.block.name}`;
        if (!reported.has(key)) {
          reported.add(key);
          this.error(
            second.block.span,
            `block ${copyName(second)} (${hex(second.start)}-${hex(second.end - 1)}) overlaps block ${copyName(first)} (${hex(first.start)}-${hex(first.end - 1)})`,
          );
        }
      }
      if (reach === null || c.end > reach.end) reach = c;
    }
    function copyName(c: Copy): string {
      return c.block.count > 1 ? `'${c.block.name}[${c.index}]'` : `'${c.block.name}'`;
    }

    const barSize = device?.ast.properties.find((p) => p.key.text === "bar_size");
    if (barSize !== undefined) {
      for (const b of this.blockModels.values()) {
        const end = b.offset + (b.count - 1) * b.stride + b.size;
        if (end > barSize.value.value) {
          this.error(
            b.span,
            `block '${b.name}' ends at ${hex(end)}, beyond the BAR size ${barSize.value.text}`,
          );
        }
      }
    }
  }

  // --- structs ---------------------------------------------------------------------------------

  /** Embedded structs must not contain themselves, directly or not (iterative: deep chains are fine). */
  private checkStructCycles(): void {
    const state = new Map<string, "visiting" | "done">();
    const embedded = (name: string) =>
      (this.structs.get(name)?.members ?? []).filter(
        (m): m is MemberAst & { type: { kind: "struct"; struct: Ident } } =>
          m.type.kind === "struct" && this.structs.has(m.type.struct.text),
      );
    for (const root of this.structs.keys()) {
      if (state.has(root)) continue;
      const path: { name: string; next: number }[] = [{ name: root, next: 0 }];
      state.set(root, "visiting");
      while (path.length > 0) {
        const frame = path[path.length - 1]!;
        const members = embedded(frame.name);
        if (frame.next >= members.length) {
          state.set(frame.name, "done");
          path.pop();
          continue;
        }
        const m = members[frame.next++]!;
        const target = m.type.struct.text;
        const st = state.get(target);
        if (st === "visiting") {
          const names = path.map((f) => f.name);
          const cycle = [...names.slice(names.indexOf(target)), target].join(" -> ");
          this.error(m.type.struct.span, `struct '${target}' contains itself (${cycle})`);
        } else if (st === undefined) {
          state.set(target, "visiting");
          path.push({ name: target, next: 0 });
        }
      }
    }
  }

  /**
   * Size of a struct's fixed part: declared, or the end of its last fixed member (computed
   * without recursion, so long chains of embedded structs are fine; cycles count as unknown).
   */
  private sizeOf(name: string): number | null {
    const memo = this.structSizes;
    if (memo.has(name)) return memo.get(name)!;
    const inProgress = new Set<string>();
    const stack = [name];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (memo.has(top)) {
        stack.pop();
        continue;
      }
      const s = this.structs.get(top);
      if (s === undefined || s.size !== null) {
        memo.set(top, s === undefined ? null : s.size!.value);
        stack.pop();
        continue;
      }
      const pending = s.members
        .map((m) => (m.type.kind === "struct" ? m.type.struct.text : null))
        .filter((d): d is string => d !== null && !memo.has(d) && !inProgress.has(d) && this.structs.has(d));
      if (!inProgress.has(top) && pending.length > 0) {
        inProgress.add(top);
        stack.push(...pending);
        continue;
      }
      let end = 0;
      for (const m of s.members) {
        const size = this.memberBytes(m);
        if (size !== null) end = Math.max(end, m.offset.value + size);
      }
      memo.set(top, end);
      inProgress.delete(top);
      stack.pop();
    }
    return memo.get(name) ?? null;
  }

  private memberBytes(m: MemberAst): number | null {
    switch (m.type.kind) {
      case "scalar":
        return scalarBytes[m.type.type]!;
      case "bytes":
        return m.type.size.value;
      case "struct": {
        const target = m.type.struct.text;
        const element = this.structSizes.has(target) ? this.structSizes.get(target)! : this.sizeOf(target);
        return element === null ? null : element * (m.type.count?.value ?? 1);
      }
      default:
        return null;
    }
  }

  private hasTail(name: string): boolean {
    return this.structs.get(name)?.members.some((m) => m.type.kind === "tail") ?? false;
  }

  private checkStruct(s: StructAst): StructModel {
    const name = s.name.text;
    const size = this.sizeOf(name) ?? 0;
    if (s.size !== null && s.size.value === 0) this.error(s.size.span, `struct '${name}' has size 0`);
    const names = new Map<string, Ident>();
    const unique = (id: Ident, kind: string): boolean => {
      const previous = names.get(id.text);
      if (previous !== undefined) {
        this.error(
          id.span,
          `duplicate ${kind} '${id.text}' in struct '${name}' (a member or value of that name is on line ${previous.span.line})`,
        );
        return false;
      }
      names.set(id.text, id);
      return true;
    };

    const members: MemberModel[] = [];
    const ranges: { name: string; start: number; end: number }[] = [];
    let tails = 0;
    for (const m of s.members) {
      if (!unique(m.name, "member")) continue;
      const model = this.checkMember(s, m, size);
      if (model === null) continue;
      members.push(model);
      if (model.kind === "tail") {
        tails++;
        if (tails > 1) this.error(m.name.span, `struct '${name}' has more than one tail array`);
        continue;
      }
      const start = model.offset;
      const end = start + model.size;
      if (s.size !== null && end > size) {
        this.error(
          m.offset.span,
          `member '${model.name}' (${hex(start)}-${hex(end - 1)}) exceeds the ${size}-byte struct '${name}'`,
        );
        continue;
      }
      const other = ranges.find((r) => start < r.end && r.start < end);
      if (other !== undefined) {
        this.error(
          m.offset.span,
          `member '${model.name}' (${hex(start)}-${hex(end - 1)}) overlaps member '${other.name}' (${hex(other.start)}-${hex(other.end - 1)})`,
        );
        continue;
      }
      ranges.push({ name: model.name, start, end });
    }

    const values: ValueModel[] = [];
    for (const v of s.values) {
      if (!unique(v.name, "value")) continue;
      const parts: ValuePart[] = [];
      let ok = true;
      for (const p of v.parts) {
        const part = this.checkValuePart(s, members, p.path, p.msb, p.lsb);
        if (part === null) ok = false;
        else parts.push(part);
      }
      const width = parts.reduce((sum, p) => sum + p.width, 0);
      if (ok && width > MAX_VALUE_BITS) {
        this.error(
          v.name.span,
          `value '${v.name.text}' is ${width} bits wide; values are limited to ${MAX_VALUE_BITS} bits`,
        );
      }
      values.push({ name: v.name.text, doc: v.doc?.value ?? "", parts, width, span: v.name.span });
    }
    return { name, doc: s.doc?.value ?? "", size, members, values, span: s.name.span };
  }

  private checkMember(s: StructAst, m: MemberAst, structSize: number): MemberModel | null {
    const name = m.name.text;
    const offset = m.offset.value;
    const base = { name, doc: m.doc?.value ?? "", offset, span: m.name.span };
    const type = m.type;
    if (type.kind !== "scalar") {
      if (m.fields !== null && m.fields.length > 0) {
        this.error(
          m.fields[0]!.name.span,
          `member '${name}' is not a scalar (u8, u16, u32, u64) and has no bit fields`,
        );
      }
      if (m.constant !== null)
        this.error(m.constant.span, `member '${name}' is not a scalar and cannot be a constant`);
    }
    switch (type.kind) {
      case "scalar": {
        const bytes = scalarBytes[type.type]!;
        if (offset % bytes !== 0) {
          this.error(
            m.offset.span,
            `member '${name}' (${type.type}) at offset ${m.offset.text} is not naturally aligned (${bytes} bytes)`,
          );
        }
        const fields = this.checkFields(m.fields ?? [], {
          what: `member '${name}'`,
          width: bytes * 8,
          access: "rw",
          selfclear: false,
          volatile: false,
        });
        return {
          ...base,
          kind: "scalar",
          type: type.type,
          size: bytes,
          fields,
          constant: this.checkConstant(m, bytes * 8),
        };
      }
      case "scalarArray":
        this.error(type.span, `arrays of scalars are not supported; use 'bytes N' or several members`);
        return null;
      case "bytes":
        if (type.size.value === 0) this.error(type.size.span, `member '${name}' has 0 bytes`);
        return { ...base, kind: "bytes", size: type.size.value };
      case "struct": {
        const target = type.struct.text;
        if (!this.structs.has(target)) {
          this.unknown("struct", type.struct);
          return null;
        }
        const count = type.count?.value ?? 1;
        if (type.count !== null && count < 1)
          this.error(type.count.span, `array '${name}' must have at least one element`);
        if (this.hasTail(target)) {
          this.error(
            type.struct.span,
            `struct '${target}' ends with a variable-length array and cannot be embedded`,
          );
        }
        const element = this.sizeOf(target) ?? 0;
        return {
          ...base,
          kind: "struct",
          struct: target,
          count: Math.max(1, count),
          size: Math.max(1, count) * element,
        };
      }
      case "tail": {
        const target = type.struct.text;
        if (!this.structs.has(target)) {
          this.unknown("struct", type.struct);
          return null;
        }
        if (this.hasTail(target)) {
          this.error(
            type.struct.span,
            `struct '${target}' ends with a variable-length array and cannot be an array element`,
          );
        }
        if (offset !== structSize) {
          this.error(
            m.offset.span,
            `tail array '${name}' must start at the end of struct '${s.name.text}' (${hex(structSize)}), not at ${m.offset.text}`,
          );
        }
        const countFrom = this.resolveFieldPath(type.countFrom, s.name.text);
        if (countFrom === null) return null;
        return { ...base, kind: "tail", struct: target, countFrom };
      }
    }
  }

  private checkConstant(m: MemberAst, bits: number): ScalarMember["constant"] {
    const c = m.constant;
    if (c === null) return null;
    let value: number;
    let enumName: string | null = null;
    let member: string | null = null;
    let text: string;
    if (c.kind === "number") {
      value = c.value.value;
      text = c.value.text;
    } else {
      const parts = c.path.parts;
      if (parts.length !== 2) {
        this.error(c.path.span, `a constant is a number or ENUM.MEMBER, not '${pathText(c.path)}'`);
        return null;
      }
      const e = this.enumModels.get(parts[0]!.text);
      if (e === undefined) {
        this.unknown("enum", parts[0]!);
        return null;
      }
      const found = e.members.find((x) => x.name === parts[1]!.text);
      if (found === undefined) {
        this.error(
          parts[1]!.span,
          `unknown member '${parts[1]!.text}' of enum '${e.name}'${didYouMean(
            parts[1]!.text,
            e.members.map((x) => x.name),
          )}`,
        );
        return null;
      }
      value = found.value;
      enumName = e.name;
      member = found.name;
      text = `${pathText(c.path)} (${hex(value)})`;
    }
    if (value >= 2 ** bits) {
      this.error(c.span, `constant ${text} does not fit the ${bits}-bit member '${m.name.text}'`);
      return null;
    }
    return { value, enumName, member };
  }

  private checkValuePart(
    s: StructAst,
    members: readonly MemberModel[],
    path: PathAst,
    msbLit: NumberLit | null,
    lsbLit: NumberLit | null,
  ): ValuePart | null {
    const [memberId, fieldId, ...rest] = path.parts;
    if (rest.length > 0) {
      this.error(
        path.span,
        `a value part is MEMBER, MEMBER.FIELD or MEMBER[msb:lsb], not '${pathText(path)}'`,
      );
      return null;
    }
    const member = this.findMember(s, members, memberId!);
    if (member === null) return null;
    if (member.kind !== "scalar") {
      this.error(memberId!.span, `value part '${member.name}' is not a scalar member`);
      return null;
    }
    if (member.type === "u64") {
      // Values are plain numbers (53 bits); a u64 member is read as a bigint.
      this.error(
        memberId!.span,
        `value part '${member.name}' is a u64 member; split it into two u32 members`,
      );
      return null;
    }
    const bits = member.size * 8;
    let msb = bits - 1;
    let lsb = 0;
    if (fieldId !== undefined) {
      const field = member.fields.find((f) => f.name === fieldId.text);
      if (field === undefined) {
        this.error(
          fieldId.span,
          `unknown field '${fieldId.text}' in member '${s.name.text}.${member.name}'${didYouMean(
            fieldId.text,
            member.fields.map((f) => f.name),
          )}`,
        );
        return null;
      }
      if (msbLit !== null) {
        this.error(msbLit.span, "a bit range applies to a member, not to one of its fields");
        return null;
      }
      msb = field.msb;
      lsb = field.lsb;
    } else if (msbLit !== null) {
      msb = msbLit.value;
      lsb = lsbLit?.value ?? msb;
      if (msb < lsb) {
        this.error(
          msbLit.span,
          `bits ${bitsText(msb, lsb)}: the most significant bit comes first ([msb:lsb])`,
        );
        return null;
      }
      if (msb >= bits) {
        this.error(msbLit.span, `bits ${bitsText(msb, lsb)} exceed the ${bits}-bit member '${member.name}'`);
        return null;
      }
    }
    return { member: member.name, msb, lsb, width: msb - lsb + 1 };
  }

  private findMember(s: StructAst, members: readonly MemberModel[], id: Ident): MemberModel | null {
    const member = members.find((m) => m.name === id.text);
    if (member === undefined) {
      if (!s.members.some((m) => m.name.text === id.text)) {
        this.error(
          id.span,
          `unknown member '${id.text}' in struct '${s.name.text}'${didYouMean(
            id.text,
            s.members.map((m) => m.name.text),
          )}`,
        );
      }
      return null;
    }
    return member;
  }

  /**
   * STRUCT.MEMBER(.FIELD), or MEMBER(.FIELD) inside `context`: a scalar member of a struct and
   * optionally one of its fields (resolved on the AST, so structs may come in any order).
   */
  private resolveFieldPath(path: PathAst, context: string | null, needField = false): FieldPath | null {
    const parts = path.parts;
    let structId: Ident | null = null;
    let rest: readonly Ident[];
    if (parts.length >= 2 && (this.structs.has(parts[0]!.text) || context === null || parts.length === 3)) {
      structId = parts[0]!;
      rest = parts.slice(1);
    } else rest = parts;
    if (rest.length === 0 || rest.length > 2 || (structId === null && context === null)) {
      this.error(path.span, `expected STRUCT.MEMBER or STRUCT.MEMBER.FIELD, not '${pathText(path)}'`);
      return null;
    }
    const structName = structId?.text ?? context!;
    const s = this.structs.get(structName);
    if (s === undefined) {
      this.unknown("struct", structId!);
      return null;
    }
    const [memberId, fieldId] = rest;
    const member = s.members.find((m) => m.name.text === memberId!.text);
    if (member === undefined) {
      this.error(
        memberId!.span,
        `unknown member '${memberId!.text}' in struct '${structName}'${didYouMean(
          memberId!.text,
          s.members.map((m) => m.name.text),
        )}`,
      );
      return null;
    }
    if (member.type.kind !== "scalar") {
      this.error(memberId!.span, `'${structName}.${member.name.text}' is not a scalar member`);
      return null;
    }
    if (fieldId === undefined) {
      if (needField) {
        this.error(
          path.span,
          `'${pathText(path)}' names a member; a bit field (STRUCT.MEMBER.FIELD) is expected`,
        );
        return null;
      }
      return { struct: structName, member: member.name.text, field: null };
    }
    const fieldNames = (member.fields ?? []).map((f) => f.name.text);
    if (!fieldNames.includes(fieldId.text)) {
      this.error(
        fieldId.span,
        `unknown field '${fieldId.text}' in member '${structName}.${member.name.text}'${didYouMean(fieldId.text, fieldNames)}`,
      );
      return null;
    }
    return { struct: structName, member: member.name.text, field: fieldId.text };
  }

  // --- register references -----------------------------------------------------------------------

  /** BLOCK.REGISTER, or BLOCK.REGISTER.FIELD when `field` is "allowed" or "required". */
  private resolveRegister(path: PathAst, field: "none" | "allowed" | "required"): RegisterHit | null {
    const parts = path.parts;
    const max = field === "none" ? 2 : 3;
    const min = field === "required" ? 3 : 2;
    if (parts.length < min || parts.length > max) {
      const expected =
        field === "none"
          ? "BLOCK.REGISTER"
          : field === "required"
            ? "BLOCK.REGISTER.FIELD"
            : "BLOCK.REGISTER(.FIELD)";
      this.error(path.span, `expected ${expected}, not '${pathText(path)}'`);
      return null;
    }
    const [blockId, registerId, fieldId] = parts;
    const block = this.blockModels.get(blockId!.text);
    if (block === undefined) {
      this.unknown("block", blockId!);
      return null;
    }
    const register = block.registers.find((r) => r.name === registerId!.text);
    if (register === undefined) {
      this.error(
        registerId!.span,
        `unknown register '${registerId!.text}' in block '${block.name}'${didYouMean(
          registerId!.text,
          block.registers.map((r) => r.name),
        )}`,
      );
      return null;
    }
    if (fieldId === undefined) return { block, register, field: null };
    const f = register.fields.find((x) => x.name === fieldId.text);
    if (f === undefined) {
      this.error(
        fieldId.span,
        `unknown field '${fieldId.text}' in register '${block.name}.${register.name}'${didYouMean(
          fieldId.text,
          register.fields.map((x) => x.name),
        )}`,
      );
      return null;
    }
    return { block, register, field: f };
  }

  private registerRef(path: PathAst): RegisterRef | null {
    const hit = this.resolveRegister(path, "none");
    return hit === null ? null : { block: hit.block.name, register: hit.register.name };
  }

  private fieldRef(path: PathAst): RegisterFieldRef | null {
    const hit = this.resolveRegister(path, "required");
    return hit === null
      ? null
      : { block: hit.block.name, register: hit.register.name, field: hit.field!.name };
  }

  // --- links -----------------------------------------------------------------------------------

  private checkLink(l: LinkAst): LinkModel | null {
    const align = l.align?.value ?? null;
    if (l.align !== null && !isPowerOfTwo(l.align.value)) {
      this.error(l.align.span, `align ${l.align.text} is not a power of two`);
    } else if (l.align !== null && l.align.value > 2 ** 32) {
      this.error(l.align.span, `align ${l.align.text} is larger than 4 GiB`);
    }
    const alignOk = l.align === null || (isPowerOfTwo(l.align.value) && l.align.value <= 2 ** 32);

    const source = this.linkSource(l);
    let target: LinkTarget | null = null;
    if (l.target.kind === "struct") {
      if (this.structs.has(l.target.struct.text)) target = { kind: "struct", struct: l.target.struct.text };
      else this.unknown("struct", l.target.struct);
    } else {
      const lengthFrom = this.resolveFieldPath(l.target.length, null);
      if (lengthFrom !== null) target = { kind: "data", lengthFrom, lengthAdd: l.target.add?.value ?? 0 };
    }
    if (source === null || target === null) return null;

    let finalAlign = align ?? 1;
    let lowMask: number;
    if (source.field !== null) {
      const implied = 2 ** source.field.lsb;
      if (align !== null && alignOk && align !== implied) {
        this.error(
          l.align!.span,
          `align ${l.align!.text} does not match field '${source.field.name}' ${bitsText(source.field.msb, source.field.lsb)} of '${source.text}', which holds addresses aligned to ${implied} bytes`,
        );
      }
      finalAlign = implied;
      lowMask = source.field.mask >>> 0;
    } else {
      lowMask = alignOk ? (0x100000000 - finalAlign) >>> 0 : 0;
    }
    return {
      doc: l.doc?.value ?? "",
      from: source.from,
      target,
      align: finalAlign,
      lowMask,
      span: l.low.span,
    };
  }

  /** The low (and high) half of a link: registers of one block or members of one struct. */
  private linkSource(l: LinkAst): { from: LinkSource; field: FieldModel | null; text: string } | null {
    const low = l.low.parts;
    const high = l.high?.parts ?? null;
    const container = low[0]!;
    if (low.length < 2 || low.length > 3) {
      this.error(l.low.span, `a link starts at BLOCK.REGISTER or STRUCT.MEMBER, not '${pathText(l.low)}'`);
      return null;
    }
    if (high !== null && high.length !== 2) {
      this.error(
        l.high!.span,
        `the high half is BLOCK.REGISTER or STRUCT.MEMBER, not '${pathText(l.high!)}'`,
      );
      return null;
    }
    if (high !== null && high[0]!.text !== container.text) {
      this.error(high[0]!.span, `the high half must be in '${container.text}', like the low half`);
      return null;
    }
    if (high !== null && high[1]!.text === low[1]!.text) {
      this.error(high[1]!.span, `the high half '${pathText(l.high!)}' is the low half itself`);
      return null;
    }
    const text = `${container.text}.${low[1]!.text}`;
    const pickField = (fields: readonly FieldModel[], owner: string): FieldModel | null | undefined => {
      if (low[2] !== undefined) {
        const f = fields.find((x) => x.name === low[2]!.text);
        if (f === undefined) {
          this.error(
            low[2].span,
            `unknown field '${low[2].text}' in '${text}'${didYouMean(
              low[2].text,
              fields.map((x) => x.name),
            )}`,
          );
          return undefined;
        }
        return f;
      }
      if (fields.length === 0) return null;
      if (fields.length === 1) return fields[0]!;
      const named = fields.find((x) => x.name === owner);
      if (named !== undefined) return named;
      this.error(
        l.low.span,
        `'${text}' has several fields; name the one holding the address ('${text}.FIELD')`,
      );
      return undefined;
    };

    const block = this.blockModels.get(container.text);
    if (block !== undefined) {
      const hitLow = this.resolveRegister(l.low, "allowed");
      if (hitLow === null) return null;
      let highName: string | null = null;
      if (l.high !== null) {
        const hitHigh = this.resolveRegister(l.high, "none");
        if (hitHigh === null) return null;
        highName = hitHigh.register.name;
      }
      const field = pickField(hitLow.register.fields, hitLow.register.name);
      if (field === undefined) return null;
      return {
        from: { kind: "register", block: block.name, low: hitLow.register.name, high: highName },
        field,
        text,
      };
    }
    const s = this.structModels.get(container.text);
    if (s === undefined) {
      const candidates = [...this.blocks.keys(), ...this.structs.keys()];
      this.error(
        container.span,
        `unknown block or struct '${container.text}'${didYouMean(container.text, candidates)}`,
      );
      return null;
    }
    const lowMember = this.linkMember(s, low[1]!);
    if (lowMember === null) return null;
    let highName: string | null = null;
    if (high !== null) {
      const highMember = this.linkMember(s, high[1]!);
      if (highMember === null) return null;
      if (lowMember.type === "u64") {
        this.error(
          high[1]!.span,
          `'${text}' is a u64 member: it holds the whole address, without a high half`,
        );
        return null;
      }
      highName = highMember.name;
    }
    const field = pickField(lowMember.fields, lowMember.name);
    if (field === undefined) return null;
    return { from: { kind: "struct", struct: s.name, low: lowMember.name, high: highName }, field, text };
  }

  private linkMember(s: StructModel, id: Ident): ScalarMember | null {
    const m = s.members.find((x) => x.name === id.text);
    if (m === undefined) {
      this.error(
        id.span,
        `unknown member '${id.text}' in struct '${s.name}'${didYouMean(
          id.text,
          s.members.map((x) => x.name),
        )}`,
      );
      return null;
    }
    if (m.kind !== "scalar" || (m.type !== "u32" && m.type !== "u64")) {
      this.error(id.span, `'${s.name}.${m.name}' must be a u32 or u64 member to hold an address`);
      return null;
    }
    return m;
  }

  // --- command sets ------------------------------------------------------------------------------

  private checkCommandSet(c: CommandSetAst): CommandSetModel {
    const empty: CommandSetModel = {
      name: c.name.text,
      doc: c.doc?.value ?? "",
      struct: "",
      member: "",
      presets: [],
      commands: [],
      span: c.name.span,
    };
    const on = c.on.parts;
    if (on.length !== 2) {
      this.error(c.on.span, `a command set is 'on' STRUCT.MEMBER (the opcode), not '${pathText(c.on)}'`);
      return empty;
    }
    const s = this.structModels.get(on[0]!.text);
    if (s === undefined) {
      this.unknown("struct", on[0]!);
      return empty;
    }
    const opcodeMember = s.members.find((m) => m.name === on[1]!.text);
    if (opcodeMember === undefined) {
      this.error(
        on[1]!.span,
        `unknown member '${on[1]!.text}' in struct '${s.name}'${didYouMean(
          on[1]!.text,
          s.members.map((m) => m.name),
        )}`,
      );
      return empty;
    }
    if (opcodeMember.kind !== "scalar") {
      this.error(on[1]!.span, `opcode member '${s.name}.${opcodeMember.name}' is not a scalar`);
      return empty;
    }
    const opcodeBits = opcodeMember.size * 8;

    const presets: CommandSetModel["presets"][number][] = [];
    for (const p of c.presets) {
      const [memberId, fieldId, ...rest] = p.path.parts;
      if (rest.length > 0) {
        this.error(p.path.span, `a preset is MEMBER = N or MEMBER.FIELD = N, not '${pathText(p.path)}'`);
        continue;
      }
      const m = s.members.find((x) => x.name === memberId!.text);
      if (m === undefined || m.kind !== "scalar") {
        if (m === undefined) {
          this.error(
            memberId!.span,
            `unknown member '${memberId!.text}' in struct '${s.name}'${didYouMean(
              memberId!.text,
              s.members.map((x) => x.name),
            )}`,
          );
        } else this.error(memberId!.span, `preset member '${m.name}' is not a scalar`);
        continue;
      }
      let bits = m.size * 8;
      if (fieldId !== undefined) {
        const f = m.fields.find((x) => x.name === fieldId.text);
        if (f === undefined) {
          this.error(
            fieldId.span,
            `unknown field '${fieldId.text}' in member '${s.name}.${m.name}'${didYouMean(
              fieldId.text,
              m.fields.map((x) => x.name),
            )}`,
          );
          continue;
        }
        bits = f.width;
      }
      if (p.value.value >= 2 ** bits) {
        this.error(p.value.span, `preset ${p.value.text} does not fit the ${bits}-bit '${pathText(p.path)}'`);
        continue;
      }
      if (m.name === opcodeMember.name)
        this.error(memberId!.span, `the opcode member '${m.name}' cannot be preset`);
      presets.push({ member: m.name, field: fieldId?.text ?? null, value: p.value.value });
    }

    // Command fields are plain numbers: u64 members (bigints) cannot be an LBA, count or tag.
    const refs = [
      ...s.members.filter((m) => m.kind === "scalar" && m.type !== "u64").map((m) => m.name),
      ...s.values.map((v) => v.name),
    ];
    const ref = (id: Ident, clause: string): string | null => {
      if (refs.includes(id.text)) return id.text;
      if (s.members.some((m) => m.name === id.text)) {
        this.error(
          id.span,
          `'${clause}' needs a scalar member of at most 32 bits or a value; '${s.name}.${id.text}' is neither`,
        );
      } else {
        this.error(
          id.span,
          `unknown member or value '${id.text}' in struct '${s.name}'${didYouMean(id.text, refs)}`,
        );
      }
      return null;
    };

    const commands: CommandModel[] = [];
    const names = new Map<string, Ident>();
    const opcodes = new Map<number, Ident>();
    for (const cmd of c.commands) {
      const name = cmd.name.text;
      const previous = names.get(name);
      if (previous !== undefined) {
        this.error(
          cmd.name.span,
          `duplicate command '${name}' in command set '${c.name.text}' (first declared on line ${previous.span.line})`,
        );
        continue;
      }
      names.set(name, cmd.name);
      const opcode = cmd.opcode.value;
      if (opcode >= 2 ** opcodeBits) {
        this.error(
          cmd.opcode.span,
          `opcode ${cmd.opcode.text} does not fit the ${opcodeBits}-bit member '${opcodeMember.name}'`,
        );
      }
      const same = opcodes.get(opcode);
      if (same !== undefined) {
        this.error(
          cmd.opcode.span,
          `opcode ${cmd.opcode.text} of '${name}' is already used by '${same.text}'`,
        );
      } else opcodes.set(opcode, cmd.name);

      const kind = cmd.commandKind.text as CommandKind;
      if (!commandKinds.includes(kind)) {
        this.error(
          cmd.commandKind.span,
          `unknown command kind '${cmd.commandKind.text}'${didYouMean(cmd.commandKind.text, commandKinds)} (kinds: ${commandKinds.join(", ")})`,
        );
      }
      let lba: string | null = null;
      let count: { from: string; zeroMeans: number; add: number } | null = null;
      let bytes: number | null = null;
      let transfer: "dma" | "pio" | "none" = "none";
      let queued = false;
      let tag: string | null = null;
      const given = new Set<string>();
      for (const clause of cmd.clauses) {
        const key = clause.kind === "dma" || clause.kind === "pio" ? "transfer" : clause.kind;
        if (given.has(key)) {
          this.error(
            clause.span,
            key === "transfer"
              ? `command '${name}' is either dma or pio`
              : `command '${name}' has two '${clause.kind}' clauses`,
          );
          continue;
        }
        given.add(key);
        switch (clause.kind) {
          case "lba":
            lba = ref(clause.ref, "lba");
            break;
          case "tag":
            tag = ref(clause.ref, "tag");
            break;
          case "count": {
            const from = ref(clause.ref, "count");
            if (from !== null)
              count = { from, zeroMeans: clause.zero?.value ?? 0, add: clause.add?.value ?? 0 };
            break;
          }
          case "bytes":
            if (clause.bytes.value === 0)
              this.error(clause.bytes.span, `command '${name}' transfers 0 bytes`);
            bytes = clause.bytes.value;
            break;
          case "dma":
          case "pio":
            transfer = clause.kind;
            break;
          case "queued":
            queued = true;
            break;
        }
      }
      if (queued && !given.has("tag"))
        this.error(cmd.name.span, `queued command '${name}' needs a 'tag' clause`);
      if (!queued && given.has("tag")) {
        this.error(
          cmd.clauses.find((x) => x.kind === "tag")!.span,
          `command '${name}' has a tag but is not 'queued'`,
        );
      }
      if ((kind === "read" || kind === "write") && (!given.has("lba") || !given.has("count"))) {
        const missing = ["lba", "count"].filter((k) => !given.has(k)).join("' and '");
        this.error(cmd.name.span, `${kind} command '${name}' needs '${missing}'`);
      }
      if (kind === "data_in" && !given.has("bytes") && !given.has("count")) {
        this.error(cmd.name.span, `data_in command '${name}' needs 'bytes' or 'count'`);
      }
      commands.push({ name, opcode, kind, lba, count, bytes, transfer, queued, tag, span: cmd.name.span });
    }
    return { ...empty, struct: s.name, member: opcodeMember.name, presets, commands };
  }

  // --- mediator --------------------------------------------------------------------------------

  private checkMediators(): MediatorModel | null {
    const [mediator, ...more] = this.mediators;
    for (const m of more) {
      this.error(
        m.protocol.span,
        `a spec has at most one 'mediator' (the first is on line ${mediator!.protocol.span.line})`,
      );
    }
    return mediator === undefined ? null : this.checkMediator(mediator);
  }

  private checkMediator(m: MediatorAst): MediatorModel | null {
    const protocol = m.protocol.text;
    if (!knownProtocols.includes(protocol)) {
      this.error(
        m.protocol.span,
        `unknown mediator protocol '${protocol}'${didYouMean(protocol, knownProtocols)} (known: ${knownProtocols.join(", ")})`,
      );
      return null;
    }
    const singles = new Map<string, MediatorItemAst>();
    const traps: TrapModel[] = [];
    const completions: CompletionModel[] = [];
    const trapKeys = new Map<string, number>();
    let ok = true;
    const fail = () => {
      ok = false;
      return null;
    };

    let slots: RegisterRef | null = null;
    let queue: RegisterRef | null = null;
    let commands: MediatorModel["commands"] | null = null;
    let direction: FieldPath | null = null;
    let fisLength: FieldPath | null = null;
    let transferred: FieldPath | null = null;
    let start: MediatorModel["start"] | null = null;
    let receive: MediatorModel["receive"] | null = null;
    let error: RegisterFieldRef | null = null;
    let status: MediatorModel["status"] | null = null;
    let interrupt: MediatorModel["interrupt"] | null = null;

    for (const item of m.items) {
      if (item.kind === "trap") {
        const trap = this.checkTrap(item);
        if (trap === null) {
          ok = false;
          continue;
        }
        const key = `${trap.access} ${trap.block}.${trap.register}${trap.field ? `.${trap.field}` : ""}`;
        const line = trapKeys.get(key);
        if (line !== undefined) {
          this.error(item.target.span, `duplicate trap '${key}' (first on line ${line})`);
          ok = false;
          continue;
        }
        trapKeys.set(key, item.span.line);
        traps.push(trap);
        continue;
      }
      if (item.kind === "complete") {
        const completion = this.checkCompletion(item);
        if (completion === null) {
          ok = false;
          continue;
        }
        const same = completions.find((x) => x.queued === completion.queued);
        if (same !== undefined) {
          this.error(item.span, `duplicate '${completion.queued ? "complete queued" : "complete"}' item`);
          ok = false;
          continue;
        }
        completions.push(completion);
        continue;
      }
      const previous = singles.get(item.kind);
      if (previous !== undefined) {
        this.error(item.span, `duplicate '${item.kind}' item (first on line ${previous.span.line})`);
        ok = false;
        continue;
      }
      singles.set(item.kind, item);
      switch (item.kind) {
        case "slots":
          slots = this.registerRef(item.target) ?? fail();
          break;
        case "queue":
          queue = this.registerRef(item.target) ?? fail();
          break;
        case "error":
          error = this.fieldRef(item.target) ?? fail();
          break;
        case "direction":
          direction = this.resolveFieldPath(item.target, null, true) ?? fail();
          break;
        case "fis_length":
          fisLength = this.resolveFieldPath(item.target, null, true) ?? fail();
          break;
        case "transferred":
          transferred = this.resolveFieldPath(item.target, null) ?? fail();
          break;
        case "start":
        case "receive": {
          const control = this.fieldRef(item.target);
          const running = this.fieldRef(item.running);
          if (control === null || running === null) fail();
          else if (item.kind === "start") start = { control, running };
          else receive = { control, running };
          break;
        }
        case "status": {
          const s = this.fieldRef(item.target);
          const e = this.fieldRef(item.error);
          if (s === null || e === null) fail();
          else status = { status: s, error: e };
          break;
        }
        case "commands":
          commands = this.checkMediatorCommands(item.set, item.target) ?? fail();
          break;
        case "interrupt": {
          const s = this.registerRef(item.status);
          const e = this.registerRef(item.enable);
          const summary = this.registerRef(item.summary);
          const gate = this.fieldRef(item.gate);
          if (s === null || e === null || summary === null || gate === null) fail();
          else interrupt = { status: s, enable: e, summary, gate };
          break;
        }
      }
    }

    const required = [
      "slots",
      "commands",
      "direction",
      "fis_length",
      "transferred",
      "start",
      "receive",
      "complete",
      "error",
      "status",
      "interrupt",
    ];
    const missing = required.filter((k) =>
      k === "complete" ? m.items.every((i) => i.kind !== "complete") : !singles.has(k),
    );
    if (missing.length > 0) {
      this.error(m.protocol.span, `mediator '${protocol}' lacks ${missing.map((k) => `'${k}'`).join(", ")}`);
      return null;
    }
    if (
      !ok ||
      slots === null ||
      commands === null ||
      direction === null ||
      fisLength === null ||
      transferred === null ||
      start === null ||
      receive === null ||
      error === null ||
      status === null ||
      interrupt === null
    ) {
      return null;
    }
    return {
      protocol,
      doc: m.doc?.value ?? "",
      traps,
      slots,
      queue,
      commands,
      direction,
      fisLength,
      transferred,
      start,
      receive,
      completions,
      error,
      status,
      interrupt,
      span: m.protocol.span,
    };
  }

  private checkTrap(item: Extract<MediatorItemAst, { kind: "trap" }>): TrapModel | null {
    const access = item.access.text;
    let ok = true;
    if (access !== "read" && access !== "write") {
      this.error(item.access.span, `a trap is on 'read' or 'write', not '${access}'`);
      ok = false;
    }
    const role = item.role.text as TrapRole;
    if (!trapRoles.includes(role)) {
      this.error(
        item.role.span,
        `unknown trap role '${item.role.text}'${didYouMean(item.role.text, trapRoles)} (roles: ${trapRoles.join(", ")})`,
      );
      ok = false;
    }
    const hit = this.resolveRegister(item.target, "allowed");
    if (hit === null || !ok) return null;
    if (access === "write") {
      const fields = hit.field !== null ? [hit.field] : hit.register.fields;
      if (fields.length > 0 && fields.every((f) => f.access === "ro" || f.access === "rsvd")) {
        this.error(
          item.target.span,
          `'write' trap on read-only ${hit.field ? "field" : "register"} '${pathText(item.target)}'`,
        );
        return null;
      }
    }
    return {
      access: access as "read" | "write",
      block: hit.block.name,
      register: hit.register.name,
      field: hit.field?.name ?? null,
      role,
      doc: item.doc?.value ?? "",
      span: item.target.span,
    };
  }

  private checkMediatorCommands(setId: Ident, target: PathAst): MediatorModel["commands"] | null {
    const set = this.setModels.get(setId.text);
    if (set === undefined) {
      this.unknown("command set", setId);
      return null;
    }
    const where = this.structMemberAt(target);
    if (where === null) return null;
    const { struct, member } = where;
    const needed = this.structModels.get(set.struct)?.size ?? 0;
    if (member.kind === "bytes" || member.kind === "struct") {
      if (member.kind === "struct" && member.struct !== set.struct) {
        this.error(
          target.span,
          `'${pathText(target)}' holds a '${member.struct}', not the '${set.struct}' of command set '${set.name}'`,
        );
        return null;
      }
      if (member.size < needed) {
        this.error(
          target.span,
          `'${pathText(target)}' (${member.size} bytes) is smaller than the ${needed}-byte '${set.struct}' of command set '${set.name}'`,
        );
        return null;
      }
      return { set: set.name, struct: struct.name, member: member.name };
    }
    this.error(
      target.span,
      `commands are carried in a 'bytes' or struct member, and '${pathText(target)}' is neither`,
    );
    return null;
  }

  private structMemberAt(path: PathAst): { struct: StructModel; member: MemberModel } | null {
    if (path.parts.length !== 2) {
      this.error(path.span, `expected STRUCT.MEMBER, not '${pathText(path)}'`);
      return null;
    }
    const [structId, memberId] = path.parts;
    const struct = this.structModels.get(structId!.text);
    if (struct === undefined) {
      this.unknown("struct", structId!);
      return null;
    }
    const member = struct.members.find((x) => x.name === memberId!.text);
    if (member === undefined) {
      this.error(
        memberId!.span,
        `unknown member '${memberId!.text}' in struct '${struct.name}'${didYouMean(
          memberId!.text,
          struct.members.map((x) => x.name),
        )}`,
      );
      return null;
    }
    return { struct, member };
  }

  private checkCompletion(item: Extract<MediatorItemAst, { kind: "complete" }>): CompletionModel | null {
    const fis = this.structModels.get(item.fis.text);
    if (fis === undefined) this.unknown("struct", item.fis);
    const where = this.structMemberAt(item.target);
    const raise = this.fieldRef(item.raise);
    if (fis === undefined || where === null || raise === null) return null;
    const { struct, member } = where;
    if (member.kind === "struct" && member.struct !== fis.name) {
      this.error(
        item.target.span,
        `'${pathText(item.target)}' holds a '${member.struct}', not a '${fis.name}'`,
      );
      return null;
    }
    if (member.kind === "bytes" && member.size < fis.size) {
      this.error(
        item.target.span,
        `'${pathText(item.target)}' (${member.size} bytes) is smaller than the ${fis.size}-byte '${fis.name}'`,
      );
      return null;
    }
    if (member.kind !== "struct" && member.kind !== "bytes") {
      this.error(item.target.span, `'${pathText(item.target)}' is not a struct or 'bytes' member`);
      return null;
    }
    return { queued: item.queued, fis: fis.name, at: { struct: struct.name, member: member.name }, raise };
  }
}

function article(kind: string): string {
  return /^[aeiou]/.test(kind) ? "an" : "a";
}
