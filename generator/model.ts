/**
 * The checked model: what the checker (grammar/check.ts) makes of a spec once every name is
 * resolved and every offset, mask and reset value is computed. Emitters read only this model,
 * never the AST (Prisma's DMMF idea), and it serialises to JSON as it is (`--emit-model`).
 *
 * All numbers are plain numbers: register and field values fit 32 bits (masks are unsigned,
 * `>>> 0`), structure members are at most 64 bits (u64 members are read as bigint by codecs).
 */

import type { SourceSpan } from "../grammar/diagnostics.ts";

export type AccessKind =
  /** read-only: writes are ignored (the device may change it) */
  | "ro"
  /** read-write */
  | "rw"
  /** write 1 to clear: writing 1 clears the bit, 0 leaves it */
  | "w1c"
  /** write 1 to set: software sets bits, the device clears them (PxCI, PxSACT) */
  | "w1s"
  /** write-only: reads return 0 */
  | "wo"
  /** reserved: reads 0, writes ignored */
  | "rsvd";

export interface DeviceModel {
  /** Spec file name as given to the compiler (used in do-not-edit headers). */
  readonly source: string;
  readonly name: string;
  readonly doc: string;
  readonly identity: DeviceIdentity;
  readonly enums: readonly EnumModel[];
  readonly blocks: readonly BlockModel[];
  readonly structs: readonly StructModel[];
  readonly links: readonly LinkModel[];
  readonly commandSets: readonly CommandSetModel[];
  readonly mediator: MediatorModel | null;
}

/** `device NAME { key = value; ... }`; keys other than these are kept in `extra`. */
export interface DeviceIdentity {
  readonly vendor: number;
  readonly device: number;
  readonly classCode: number;
  readonly bar: number;
  readonly barSize: number;
  readonly sectorSize: number;
  readonly extra: Readonly<Record<string, number>>;
}

export interface EnumModel {
  readonly name: string;
  readonly doc: string;
  readonly members: readonly EnumMember[];
  readonly span: SourceSpan;
}

export interface EnumMember {
  readonly name: string;
  readonly value: number;
  readonly doc: string;
}

/** A register block; `count` > 1 for repeated blocks (ports), each at offset + i * stride. */
export interface BlockModel {
  readonly name: string;
  readonly doc: string;
  readonly offset: number;
  readonly size: number;
  readonly count: number;
  /** Equal to size when not given; 0 is never used. */
  readonly stride: number;
  readonly registers: readonly RegisterModel[];
  readonly span: SourceSpan;
}

export interface RegisterModel {
  readonly name: string;
  readonly doc: string;
  /** Offset inside the block. */
  readonly offset: number;
  /** Width in bits: 8, 16, 32 (default) or 64. */
  readonly width: number;
  /** Reset value of the whole register, assembled from the field resets. */
  readonly reset: number;
  /** Changed by the device behind software's back: never cache (Linux regmap's "volatile"). */
  readonly volatile: boolean;
  readonly fields: readonly FieldModel[];
  /** Bit masks per access kind, over the whole register; bits in no field are in `reserved`. */
  readonly masks: AccessMasks;
  readonly span: SourceSpan;
}

export interface AccessMasks {
  readonly ro: number;
  readonly rw: number;
  readonly w1c: number;
  readonly w1s: number;
  readonly wo: number;
  readonly reserved: number;
  /** Bits the device clears by itself once set (GHC.HR, PxCMD.CLO). */
  readonly selfclear: number;
}

export interface FieldModel {
  readonly name: string;
  readonly doc: string;
  /** Most and least significant bit, inclusive: `[12:8]` is msb 12, lsb 8. */
  readonly msb: number;
  readonly lsb: number;
  readonly width: number;
  /** Mask in place (unsigned), i.e. ((1 << width) - 1) << lsb. */
  readonly mask: number;
  readonly access: AccessKind;
  readonly reset: number;
  readonly selfclear: boolean;
  readonly volatile: boolean;
  /** Name of an EnumModel giving the field's values, if any. */
  readonly enumName: string | null;
  readonly span: SourceSpan;
}

export type ScalarType = "u8" | "u16" | "u32" | "u64";

export interface StructModel {
  readonly name: string;
  readonly doc: string;
  /** Size of the fixed part in bytes (a trailing variable array is not included). */
  readonly size: number;
  readonly members: readonly MemberModel[];
  readonly values: readonly ValueModel[];
  readonly span: SourceSpan;
}

export type MemberModel = ScalarMember | BytesMember | StructMember | TailArrayMember;

interface MemberBase {
  readonly name: string;
  readonly doc: string;
  readonly offset: number;
  readonly span: SourceSpan;
}

export interface ScalarMember extends MemberBase {
  readonly kind: "scalar";
  readonly type: ScalarType;
  /** Bytes: 1, 2, 4 or 8. */
  readonly size: number;
  /** Bit fields inside the scalar (little-endian value), possibly empty. */
  readonly fields: readonly FieldModel[];
  /** A fixed value the member must hold (FIS type), with the enum member it came from if any. */
  readonly constant: {
    readonly value: number;
    readonly enumName: string | null;
    readonly member: string | null;
  } | null;
}

export interface BytesMember extends MemberBase {
  readonly kind: "bytes";
  readonly size: number;
}

/** An embedded structure, or a fixed array of them (`count` > 1). */
export interface StructMember extends MemberBase {
  readonly kind: "struct";
  readonly struct: string;
  readonly count: number;
  /** count * size of the element struct. */
  readonly size: number;
}

/** A variable-length array after the fixed part, its length held elsewhere (PRDT, PRDTL). */
export interface TailArrayMember extends MemberBase {
  readonly kind: "tail";
  readonly struct: string;
  readonly countFrom: FieldPath;
}

/** A path to a struct member, optionally one of its bit fields: CommandHeader.DW0.PRDTL. */
export interface FieldPath {
  readonly struct: string;
  readonly member: string;
  readonly field: string | null;
}

/** A value assembled from several members or bit ranges, most significant part first. */
export interface ValueModel {
  readonly name: string;
  readonly doc: string;
  readonly parts: readonly ValuePart[];
  /** Total width in bits (at most 53, so it fits a JS number exactly). */
  readonly width: number;
  readonly span: SourceSpan;
}

export interface ValuePart {
  readonly member: string;
  /** Bit range inside the member's value that this part takes. */
  readonly msb: number;
  readonly lsb: number;
  readonly width: number;
}

export interface RegisterRef {
  readonly block: string;
  readonly register: string;
}

export interface RegisterFieldRef extends RegisterRef {
  readonly field: string;
}

/** A pointer held in a register pair or a struct member pair (low : high halves). */
export type LinkSource =
  | { readonly kind: "register"; readonly block: string; readonly low: string; readonly high: string | null }
  | { readonly kind: "struct"; readonly struct: string; readonly low: string; readonly high: string | null };

export type LinkTarget =
  | { readonly kind: "struct"; readonly struct: string }
  | { readonly kind: "data"; readonly lengthFrom: FieldPath; readonly lengthAdd: number };

export interface LinkModel {
  readonly doc: string;
  readonly from: LinkSource;
  readonly target: LinkTarget;
  /** Required alignment of the address in bytes (a power of two). */
  readonly align: number;
  /** Mask of the address bits held by the low half (e.g. 0xfffffc00 for PxCLB). */
  readonly lowMask: number;
  readonly span: SourceSpan;
}

export type CommandKind = "read" | "write" | "flush" | "data_in" | "nondata" | "trim";

export interface CommandSetModel {
  readonly name: string;
  readonly doc: string;
  /** The struct and member holding the opcode (RegH2DFis.COMMAND). */
  readonly struct: string;
  readonly member: string;
  /** Fields every command of the set carries when software builds one (`with FLAGS.C = 1`). */
  readonly presets: readonly {
    readonly member: string;
    readonly field: string | null;
    readonly value: number;
  }[];
  readonly commands: readonly CommandModel[];
  readonly span: SourceSpan;
}

export interface CommandModel {
  readonly name: string;
  readonly opcode: number;
  readonly kind: CommandKind;
  /** Name of a member or value of the command struct that holds the LBA. */
  readonly lba: string | null;
  /**
   * Where the sector count comes from, and what a count of 0 means. `add` is added to the raw
   * count (`count NLB + 1`: NVMe's 0-based NLB); the checker always sets it, 0 when not given.
   */
  readonly count: { readonly from: string; readonly zeroMeans: number; readonly add?: number } | null;
  /** Fixed transfer length in bytes (IDENTIFY: 512). */
  readonly bytes: number | null;
  readonly transfer: "dma" | "pio" | "none";
  readonly queued: boolean;
  /** Member or value holding the NCQ tag. */
  readonly tag: string | null;
  readonly span: SourceSpan;
}

export type TrapRole = "issue" | "queue" | "shadow" | "reset" | "engine";

export interface TrapModel {
  readonly access: "read" | "write";
  readonly block: string;
  readonly register: string;
  /** A trap on one field (`host.GHC.HR`) still traps the register; the field says what matters. */
  readonly field: string | null;
  readonly role: TrapRole;
  readonly doc: string;
  readonly span: SourceSpan;
}

export interface CompletionModel {
  readonly queued: boolean;
  readonly fis: string;
  /** Where in the received-FIS structure it is written. */
  readonly at: { readonly struct: string; readonly member: string };
  readonly raise: RegisterFieldRef;
}

/**
 * How a mediator follows the device's command protocol. `protocol` names the family the
 * generator emits code for ("slots": a command list with an issue bitmap, as AHCI); other
 * families (queues and doorbells, as NVMe) add their own keys.
 */
export interface MediatorModel {
  readonly protocol: string;
  readonly doc: string;
  readonly traps: readonly TrapModel[];
  readonly slots: RegisterRef;
  readonly queue: RegisterRef | null;
  readonly commands: { readonly set: string; readonly struct: string; readonly member: string };
  /** Command header fields: the data direction bit, the command FIS length, the bytes-transferred count. */
  readonly direction: FieldPath;
  readonly fisLength: FieldPath;
  readonly transferred: FieldPath;
  /** The port's command engine: the start bit and its running indicator (PxCMD.ST / CR). */
  readonly start: { readonly control: RegisterFieldRef; readonly running: RegisterFieldRef };
  /** FIS reception: enable bit and running indicator (PxCMD.FRE / FR). */
  readonly receive: { readonly control: RegisterFieldRef; readonly running: RegisterFieldRef };
  readonly completions: readonly CompletionModel[];
  readonly error: RegisterFieldRef;
  /** The task-file register's status and error fields (PxTFD.STS, PxTFD.ERR). */
  readonly status: { readonly status: RegisterFieldRef; readonly error: RegisterFieldRef };
  readonly interrupt: {
    readonly status: RegisterRef;
    readonly enable: RegisterRef;
    readonly summary: RegisterRef;
    readonly gate: RegisterFieldRef;
  };
  readonly span: SourceSpan;
}
