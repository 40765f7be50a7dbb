/**
 * The typed syntax tree of a spec: what was written, where, nothing resolved yet. Built from the
 * chevrotain CST by build-ast.ts, read by check.ts. Every node has a `span`: for named nodes the
 * whole declaration (first token to last; carets stop at the end of the first line), and names,
 * numbers and strings their own token.
 */

import type { SourceSpan } from "./diagnostics.ts";

export type { SourceSpan };

export interface Ident {
  readonly text: string;
  readonly span: SourceSpan;
}

export interface NumberLit {
  /** The value (exact: the AST builder rejects literals beyond 2^53 - 1). */
  readonly value: number;
  /** The literal as written (`0x7F`, `1_024`). */
  readonly text: string;
  readonly span: SourceSpan;
}

export interface StringLit {
  /** The text with escapes decoded. */
  readonly value: string;
  readonly span: SourceSpan;
}

/** `a.b.c`: one to several names. */
export interface PathAst {
  readonly parts: readonly Ident[];
  readonly span: SourceSpan;
}

export type AccessKeyword = "ro" | "rw" | "w1c" | "w1s" | "wo" | "rsvd";

/** A flag after a register's `:` or a field's bit range. */
export interface FlagAst {
  readonly kind: AccessKeyword | "selfclear" | "volatile";
  readonly span: SourceSpan;
}

export interface SpecAst {
  readonly declarations: readonly DeclarationAst[];
  readonly span: SourceSpan;
}

export type DeclarationAst =
  | DeviceAst
  | EnumAst
  | BlockAst
  | StructAst
  | LinkAst
  | CommandSetAst
  | MediatorAst;

export interface DeviceAst {
  readonly kind: "device";
  readonly name: Ident;
  readonly doc: StringLit | null;
  readonly properties: readonly DevicePropertyAst[];
  readonly span: SourceSpan;
}

export interface DevicePropertyAst {
  readonly key: Ident;
  readonly value: NumberLit;
  readonly span: SourceSpan;
}

export interface EnumAst {
  readonly kind: "enum";
  readonly name: Ident;
  readonly doc: StringLit | null;
  readonly members: readonly EnumMemberAst[];
  readonly span: SourceSpan;
}

export interface EnumMemberAst {
  readonly name: Ident;
  readonly value: NumberLit;
  readonly doc: StringLit | null;
  readonly span: SourceSpan;
}

export interface BlockAst {
  readonly kind: "block";
  readonly name: Ident;
  /** `[N]` after the name; null for a single block. */
  readonly count: NumberLit | null;
  readonly offset: NumberLit;
  /** Every `stride` / `size` clause as written (repeats are reported by the checker). */
  readonly strides: readonly NumberLit[];
  readonly sizes: readonly NumberLit[];
  readonly doc: StringLit | null;
  readonly registers: readonly RegisterAst[];
  readonly span: SourceSpan;
}

export interface RegisterAst {
  readonly name: Ident;
  readonly offset: NumberLit;
  readonly width: NumberLit | null;
  readonly flags: readonly FlagAst[];
  readonly reset: NumberLit | null;
  readonly doc: StringLit | null;
  readonly fields: readonly FieldAst[];
  readonly span: SourceSpan;
}

export interface FieldAst {
  readonly name: Ident;
  readonly msb: NumberLit;
  /** null for a one-bit field `[n]`. */
  readonly lsb: NumberLit | null;
  /** The `[msb:lsb]` brackets. */
  readonly bitsSpan: SourceSpan;
  readonly flags: readonly FlagAst[];
  /** Every `enum NAME` clause (more than one is reported by the checker). */
  readonly enums: readonly Ident[];
  readonly reset: NumberLit | null;
  readonly doc: StringLit | null;
  readonly span: SourceSpan;
}

export interface StructAst {
  readonly kind: "struct";
  readonly name: Ident;
  readonly size: NumberLit | null;
  readonly doc: StringLit | null;
  readonly members: readonly MemberAst[];
  readonly values: readonly ValueAst[];
  readonly span: SourceSpan;
}

export type ScalarTypeName = "u8" | "u16" | "u32" | "u64";

export type MemberTypeAst =
  | { readonly kind: "scalar"; readonly type: ScalarTypeName; readonly span: SourceSpan }
  /** A scalar written with an array suffix (`u8[4]`): kept so the checker can reject it. */
  | { readonly kind: "scalarArray"; readonly type: ScalarTypeName; readonly span: SourceSpan }
  | { readonly kind: "bytes"; readonly size: NumberLit; readonly span: SourceSpan }
  | {
      readonly kind: "struct";
      readonly struct: Ident;
      readonly count: NumberLit | null;
      readonly span: SourceSpan;
    }
  | { readonly kind: "tail"; readonly struct: Ident; readonly countFrom: PathAst; readonly span: SourceSpan };

export type ConstAst =
  | { readonly kind: "number"; readonly value: NumberLit; readonly span: SourceSpan }
  | { readonly kind: "enum"; readonly path: PathAst; readonly span: SourceSpan };

export interface MemberAst {
  readonly name: Ident;
  readonly offset: NumberLit;
  readonly type: MemberTypeAst;
  readonly constant: ConstAst | null;
  readonly doc: StringLit | null;
  /** Bit fields in braces; null when the member ends with `;`. */
  readonly fields: readonly FieldAst[] | null;
  readonly span: SourceSpan;
}

export interface ValueAst {
  readonly name: Ident;
  readonly parts: readonly ValuePartAst[];
  readonly doc: StringLit | null;
  readonly span: SourceSpan;
}

/** `MEMBER`, `MEMBER.FIELD` or `MEMBER[msb:lsb]`. */
export interface ValuePartAst {
  readonly path: PathAst;
  readonly msb: NumberLit | null;
  readonly lsb: NumberLit | null;
  readonly span: SourceSpan;
}

export interface LinkAst {
  readonly kind: "link";
  readonly low: PathAst;
  readonly high: PathAst | null;
  readonly target:
    | { readonly kind: "struct"; readonly struct: Ident; readonly span: SourceSpan }
    | {
        readonly kind: "data";
        readonly length: PathAst;
        readonly add: NumberLit | null;
        readonly span: SourceSpan;
      };
  readonly align: NumberLit | null;
  readonly doc: StringLit | null;
  readonly span: SourceSpan;
}

export interface CommandSetAst {
  readonly kind: "commands";
  readonly name: Ident;
  readonly on: PathAst;
  readonly presets: readonly PresetAst[];
  readonly doc: StringLit | null;
  readonly commands: readonly CommandAst[];
  readonly span: SourceSpan;
}

/** `with FLAGS.C = 1`: a member or member field every command carries. */
export interface PresetAst {
  readonly path: PathAst;
  readonly value: NumberLit;
  readonly span: SourceSpan;
}

export interface CommandAst {
  readonly name: Ident;
  readonly opcode: NumberLit;
  /** read, write, flush, data_in, nondata or trim; validated by the checker. */
  readonly commandKind: Ident;
  readonly clauses: readonly CommandClauseAst[];
  readonly doc: StringLit | null;
  readonly span: SourceSpan;
}

export type CommandClauseAst =
  | { readonly kind: "lba"; readonly ref: Ident; readonly span: SourceSpan }
  | {
      readonly kind: "count";
      readonly ref: Ident;
      /** `count NLB + 1`: added to the raw count (0-based counts, NVMe). */
      readonly add: NumberLit | null;
      /** `zero 256`: what a raw count of 0 means (ATA). */
      readonly zero: NumberLit | null;
      readonly span: SourceSpan;
    }
  | { readonly kind: "bytes"; readonly bytes: NumberLit; readonly span: SourceSpan }
  | { readonly kind: "dma" | "pio" | "queued"; readonly span: SourceSpan }
  | { readonly kind: "tag"; readonly ref: Ident; readonly span: SourceSpan };

export interface MediatorAst {
  readonly kind: "mediator";
  readonly protocol: Ident;
  readonly doc: StringLit | null;
  readonly items: readonly MediatorItemAst[];
  readonly span: SourceSpan;
}

export type MediatorItemAst =
  | {
      readonly kind: "trap";
      readonly access: Ident;
      readonly target: PathAst;
      readonly role: Ident;
      readonly doc: StringLit | null;
      readonly span: SourceSpan;
    }
  | {
      readonly kind: "slots" | "queue" | "error" | "direction" | "fis_length" | "transferred";
      readonly target: PathAst;
      readonly span: SourceSpan;
    }
  | { readonly kind: "status"; readonly target: PathAst; readonly error: PathAst; readonly span: SourceSpan }
  | {
      readonly kind: "start" | "receive";
      readonly target: PathAst;
      readonly running: PathAst;
      readonly span: SourceSpan;
    }
  | { readonly kind: "commands"; readonly set: Ident; readonly target: PathAst; readonly span: SourceSpan }
  | {
      readonly kind: "complete";
      readonly queued: boolean;
      readonly fis: Ident;
      readonly target: PathAst;
      readonly raise: PathAst;
      readonly span: SourceSpan;
    }
  | {
      readonly kind: "interrupt";
      readonly status: PathAst;
      readonly enable: PathAst;
      readonly summary: PathAst;
      readonly gate: PathAst;
      readonly span: SourceSpan;
    };

/** Every mediator item keyword, for messages. */
export const mediatorItemKinds = [
  "trap",
  "slots",
  "queue",
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
] as const;
