import { VariableDeclarationKind } from "ts-morph";
import type { DeviceModel, MemberModel, ScalarMember, StructModel, ValueModel } from "../model.ts";
import { constName, docText, finish, type GeneratedFile, hex, memberName, StatementBatch } from "./common.ts";

/**
 * structs.ts: a codec per in-memory structure and FIS: layout constants, a typed interface,
 * `decodeX` and `encodeX` over Uint8Array (little-endian, exact round trip), and getters and
 * setters for values assembled from split bytes (48-bit LBA from six bytes).
 */
export function emitStructs(model: DeviceModel, path: string): GeneratedFile {
  const file = new StatementBatch();
  emitByteHelpers(
    file,
    model.structs.some((s) => s.members.some((m) => m.kind === "scalar" && m.type === "u64")),
  );
  const byName = new Map(model.structs.map((s) => [s.name, s]));
  for (const s of model.structs) emitStruct(file, s, byName);
  return finish(file.toSourceFile(path), model.source, path);
}

function emitByteHelpers(file: StatementBatch, wide: boolean): void {
  const helpers = `// Little-endian accessors. Plain byte arithmetic: no DataView allocation per field.
function readU16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function readU64(b: Uint8Array, o: number): bigint {
  return BigInt(readU32(b, o)) | (BigInt(readU32(b, o + 4)) << 32n);
}

function writeU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

function writeU64(b: Uint8Array, o: number, v: bigint): void {
  writeU32(b, o, Number(v & 0xffffffffn));
  writeU32(b, o + 4, Number((v >> 32n) & 0xffffffffn));
}`;
  // Only the helpers some member uses: the output stays free of dead code.
  const kept = wide
    ? helpers
    : helpers
        .replace(/\nfunction readU64[\s\S]*?\n}\n/, "\n")
        .replace(/\n\nfunction writeU64[\s\S]*?\n}$/, "");
  file.addStatements(kept);
}

function emitStruct(file: StatementBatch, s: StructModel, byName: ReadonlyMap<string, StructModel>): void {
  const S = constName(s.name);
  addConst(
    file,
    `${S}_SIZE`,
    String(s.size),
    `${docText(s.doc)}: size in bytes${hasTail(s) ? " of the fixed part" : ""}`,
  );
  for (const m of s.members) {
    addConst(
      file,
      `${S}_${constName(m.name)}`,
      hex(m.offset, 2),
      `${docText(m.doc || m.name)} (byte offset)`,
    );
    if (m.kind === "scalar") {
      for (const f of m.fields) {
        const bits = f.width === 1 ? `bit ${f.lsb}` : `bits ${f.msb}:${f.lsb}`;
        addConst(
          file,
          `${S}_${constName(m.name)}_${constName(f.name)}`,
          hex(f.mask),
          `${docText(f.doc || f.name)} (${bits})`,
        );
        if (f.width > 1)
          addConst(
            file,
            `${S}_${constName(m.name)}_${constName(f.name)}_SHIFT`,
            String(f.lsb),
            `${f.name}: lowest bit`,
          );
      }
      if (m.constant)
        addConst(
          file,
          `${S}_${constName(m.name)}_VALUE`,
          hex(m.constant.value, 2),
          `the only valid ${m.name} of a ${s.name}`,
        );
    }
  }

  const fields = s.members.filter((m) => m.kind !== "tail");
  file.addInterface({
    isExported: true,
    name: s.name,
    docs: [docText(s.doc)],
    properties: fields.map((m) => ({ name: m.name, type: tsType(m), docs: m.doc ? [docText(m.doc)] : [] })),
  });

  const decodeBody = fields.map((m) => `${m.name}: ${decodeExpr(m, byName)},`).join("\n");
  file.addFunction({
    isExported: true,
    name: `decode${s.name}`,
    docs: [`Reads a ${s.name} from \`bytes\` at \`offset\`.`],
    parameters: [
      { name: "bytes", type: "Uint8Array" },
      { name: "offset", initializer: "0" },
    ],
    returnType: s.name,
    statements: `return {\n${decodeBody}\n};`,
  });

  file.addFunction({
    isExported: true,
    name: `encode${s.name}`,
    docs: [
      `Writes \`value\` into \`bytes\` at \`offset\` (a new buffer when none is given) and returns the buffer.`,
    ],
    parameters: [
      { name: "value", type: s.name },
      { name: "bytes", type: "Uint8Array", initializer: `new Uint8Array(${S}_SIZE)` },
      { name: "offset", initializer: "0" },
    ],
    returnType: "Uint8Array",
    statements: [...fields.map((m) => encodeStatement(m, byName)), "return bytes;"],
  });

  file.addFunction({
    isExported: true,
    name: `empty${s.name}`,
    docs: [
      `A ${s.name} with every member zero${s.members.some((m) => m.kind === "scalar" && m.constant) ? " except its constants" : ""}.`,
    ],
    returnType: s.name,
    statements: `return decode${s.name}(${hasConstants(s, byName) ? `encode${s.name}Constants(new Uint8Array(${S}_SIZE))` : `new Uint8Array(${S}_SIZE)`});`,
  });
  if (hasConstants(s, byName)) emitConstants(file, s, byName);

  for (const m of s.members) if (m.kind === "tail") emitTail(file, s, m.name, m.struct, m.offset, byName);
  for (const v of s.values) emitValue(file, s, v);
}

function hasTail(s: StructModel): boolean {
  return s.members.some((m) => m.kind === "tail");
}

function hasConstants(s: StructModel, byName: ReadonlyMap<string, StructModel>): boolean {
  return s.members.some(
    (m) =>
      (m.kind === "scalar" && m.constant !== null) ||
      (m.kind === "struct" && hasConstants(byName.get(m.struct)!, byName)),
  );
}

/** A function writing the structure's constants (FIS types), also inside embedded structures. */
function emitConstants(file: StatementBatch, s: StructModel, byName: ReadonlyMap<string, StructModel>): void {
  const S = constName(s.name);
  const statements: string[] = [];
  for (const m of s.members) {
    if (m.kind === "scalar" && m.constant) {
      statements.push(`bytes[offset + ${S}_${constName(m.name)}] = ${S}_${constName(m.name)}_VALUE;`);
    } else if (m.kind === "struct" && hasConstants(byName.get(m.struct)!, byName)) {
      const inner = byName.get(m.struct)!;
      for (let i = 0; i < m.count; i++) {
        statements.push(
          `encode${m.struct}Constants(bytes, offset + ${S}_${constName(m.name)}${i ? ` + ${i * inner.size}` : ""});`,
        );
      }
    }
  }
  statements.push("return bytes;");
  file.addFunction({
    isExported: true,
    name: `encode${s.name}Constants`,
    docs: [`Writes only the constant members of a ${s.name} (its FIS type bytes).`],
    parameters: [
      { name: "bytes", type: "Uint8Array" },
      { name: "offset", initializer: "0" },
    ],
    returnType: "Uint8Array",
    statements,
  });
}

function tsType(m: MemberModel): string {
  switch (m.kind) {
    case "scalar":
      return m.type === "u64" ? "bigint" : "number";
    case "bytes":
      return "Uint8Array";
    case "struct":
      return m.count > 1 ? `${m.struct}[]` : m.struct;
    case "tail":
      return `${m.struct}[]`;
  }
}

function at(m: MemberModel): string {
  return m.offset === 0 ? "offset" : `offset + ${hex(m.offset, 2)}`;
}

function decodeExpr(m: MemberModel, byName: ReadonlyMap<string, StructModel>): string {
  switch (m.kind) {
    case "scalar":
      return scalarRead(m, at(m));
    case "bytes":
      return `bytes.slice(${at(m)}, ${at(m)} + ${m.size})`;
    case "struct": {
      if (m.count === 1) return `decode${m.struct}(bytes, ${at(m)})`;
      const size = byName.get(m.struct)!.size;
      return `Array.from({ length: ${m.count} }, (_, i) => decode${m.struct}(bytes, ${at(m)} + i * ${size}))`;
    }
    case "tail":
      return "[]";
  }
}

function scalarRead(m: ScalarMember, where: string): string {
  switch (m.type) {
    case "u8":
      return `bytes[${where}]!`;
    case "u16":
      return `readU16(bytes, ${where})`;
    case "u32":
      return `readU32(bytes, ${where})`;
    case "u64":
      return `readU64(bytes, ${where})`;
  }
}

function encodeStatement(m: MemberModel, byName: ReadonlyMap<string, StructModel>): string {
  const v = `value.${m.name}`;
  switch (m.kind) {
    case "scalar":
      switch (m.type) {
        case "u8":
          return `bytes[${at(m)}] = ${v} & 0xff;`;
        case "u16":
          return `writeU16(bytes, ${at(m)}, ${v});`;
        case "u32":
          return `writeU32(bytes, ${at(m)}, ${v});`;
        case "u64":
          return `writeU64(bytes, ${at(m)}, ${v});`;
      }
      break;
    case "bytes":
      return `bytes.set(${v}.subarray(0, ${m.size}), ${at(m)});`;
    case "struct": {
      if (m.count === 1) return `encode${m.struct}(${v}, bytes, ${at(m)});`;
      const size = byName.get(m.struct)!.size;
      return `${v}.slice(0, ${m.count}).forEach((element, i) => encode${m.struct}(element, bytes, ${at(m)} + i * ${size}));`;
    }
    case "tail":
      return "";
  }
  return "";
}

function emitTail(
  file: StatementBatch,
  s: StructModel,
  member: string,
  element: string,
  offset: number,
  byName: ReadonlyMap<string, StructModel>,
): void {
  const size = byName.get(element)!.size;
  const S = constName(s.name);
  file.addFunction({
    isExported: true,
    name: `${memberName(s.name)}${memberName(member).replace(/^./, (c) => c.toUpperCase())}Offset`,
    docs: [
      `Byte offset of entry \`index\` of ${s.name}.${member} (entries of ${size} bytes from ${hex(offset, 2)}).`,
    ],
    parameters: [{ name: "index", type: "number" }],
    returnType: "number",
    statements: `return ${S}_${constName(member)} + index * ${constName(element)}_SIZE;`,
  });
}

function emitValue(file: StatementBatch, s: StructModel, v: ValueModel): void {
  const base = `${memberName(s.name)}${typeNameOf(v.name)}`;
  // Parts are most significant first; position counts from the least significant end.
  let position = 0;
  const placed = [...v.parts].reverse().map((p) => {
    const at = position;
    position += p.width;
    return { ...p, at };
  });
  const terms = placed.map((p) => {
    const extract =
      p.lsb === 0 && p.width === memberWidth(s, p.member)
        ? `value.${p.member}`
        : `((value.${p.member} >>> ${p.lsb}) & ${hex(2 ** p.width - 1, 2)})`;
    return p.at === 0 ? extract : `${extract} * ${2 ** p.at}`;
  });
  file.addFunction({
    isExported: true,
    name: base,
    docs: [
      `${docText(v.doc || v.name)}: ${v.parts.map((p) => `${p.member}[${p.msb}:${p.lsb}]`).join(" : ")} (${v.width} bits).`,
    ],
    parameters: [{ name: "value", type: s.name }],
    returnType: "number",
    statements: `return ${terms.join(" + ")};`,
  });
  const sets = placed.map((p) => {
    const bits = p.at === 0 ? `n % ${2 ** p.width}` : `Math.floor(n / ${2 ** p.at}) % ${2 ** p.width}`;
    const mask = hex(((2 ** p.width - 1) * 2 ** p.lsb) >>> 0, 2);
    return p.lsb === 0 && p.width === memberWidth(s, p.member)
      ? `value.${p.member} = ${bits};`
      : `value.${p.member} = ((value.${p.member} & ~${mask}) | ((${bits}) << ${p.lsb})) >>> 0;`;
  });
  file.addFunction({
    isExported: true,
    name: `set${base[0]!.toUpperCase()}${base.slice(1)}`,
    docs: [`Stores \`n\` (at most ${v.width} bits) into the members ${v.name} is made of.`],
    parameters: [
      { name: "value", type: s.name },
      { name: "n", type: "number" },
    ],
    returnType: "void",
    statements: sets,
  });
}

function memberWidth(s: StructModel, name: string): number {
  const m = s.members.find((x) => x.name === name);
  return m?.kind === "scalar" ? m.size * 8 : 0;
}

function typeNameOf(name: string): string {
  const camel = memberName(name);
  return camel[0]!.toUpperCase() + camel.slice(1);
}

function addConst(file: StatementBatch, name: string, initializer: string, doc: string): void {
  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: [doc],
    declarations: [{ name, initializer }],
  });
}
