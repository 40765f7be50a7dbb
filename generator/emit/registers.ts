import { VariableDeclarationKind } from "ts-morph";
import type { BlockModel, DeviceModel, FieldModel, RegisterModel } from "../model.ts";
import {
  constName,
  docText,
  finish,
  type GeneratedFile,
  hex,
  memberName,
  StatementBatch,
  str,
} from "./common.ts";

/**
 * registers.ts: the device identity, enumerations, register offsets, field masks and reset
 * values as typed constants, and a register file that applies the access semantics. The
 * emulated device and the mediator both use it, so neither hand-copies a constant.
 */
export function emitRegisters(model: DeviceModel, path: string): GeneratedFile {
  const file = new StatementBatch();
  emitIdentity(file, model);
  for (const e of model.enums) {
    file.addVariableStatement({
      isExported: true,
      declarationKind: VariableDeclarationKind.Const,
      docs: [docText(e.doc)],
      declarations: [
        {
          name: e.name,
          initializer: `{\n${e.members.map((m) => `/** ${docText(m.doc)} */\n${m.name}: ${hex(m.value, 2)},`).join("\n")}\n} as const`,
        },
      ],
    });
    file.addTypeAlias({ isExported: true, name: e.name, type: `(typeof ${e.name})[keyof typeof ${e.name}]` });
  }
  for (const block of model.blocks) emitBlock(file, block);
  emitTables(file, model);
  emitRegisterFile(file, model);
  return finish(file.toSourceFile(path), model.source, path);
}

function emitIdentity(file: StatementBatch, model: DeviceModel): void {
  const id = model.identity;
  const extra = Object.entries(id.extra)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${memberName(k)}: ${hex(v, 2)},`);
  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: [`${docText(model.doc)}: identity and register window.`],
    declarations: [
      {
        name: "DEVICE",
        initializer: `{
          name: ${str(model.name)},
          vendorId: ${hex(id.vendor, 4)},
          deviceId: ${hex(id.device, 4)},
          classCode: ${hex(id.classCode, 6)},
          bar: ${id.bar},
          barSize: ${hex(id.barSize, 4)},
          sectorSize: ${id.sectorSize},
          ${extra.join("\n")}
        } as const`,
      },
    ],
  });
}

function emitBlock(file: StatementBatch, block: BlockModel): void {
  const B = constName(block.name);
  const repeated = block.count > 1;
  const constants: [string, string, string][] = [
    [
      `${B}_BASE`,
      hex(block.offset, 3),
      `${block.doc}: offset of the ${repeated ? "first copy" : "block"} in the window`,
    ],
    [`${B}_SIZE`, hex(block.size, 3), `${block.doc}: bytes per copy`],
  ];
  if (repeated) {
    constants.push([`${B}_STRIDE`, hex(block.stride, 3), `${block.doc}: distance between copies`]);
    constants.push([`${B}_COUNT`, String(block.count), `${block.doc}: number of copies`]);
  }
  for (const [name, value, doc] of constants) addConst(file, name, value, doc);
  if (repeated) {
    file.addFunction({
      isExported: true,
      name: `${memberName(block.name)}Offset`,
      docs: [`Offset in the register window of register \`register\` (a ${B}_* offset) of copy \`index\`.`],
      parameters: [
        { name: "index", type: "number" },
        { name: "register", type: "number" },
      ],
      returnType: "number",
      statements: `return ${B}_BASE + index * ${B}_STRIDE + register;`,
    });
  }
  for (const reg of block.registers) emitRegister(file, B, reg);
}

function emitRegister(file: StatementBatch, B: string, reg: RegisterModel): void {
  const R = `${B}_${constName(reg.name)}`;
  addConst(file, R, hex(reg.offset, 2), `${reg.doc} (offset in the block)`);
  addConst(file, `${R}_RESET`, hex(reg.reset), `${reg.name} value after reset`);
  for (const f of reg.fields) emitField(file, R, f);
}

function emitField(file: StatementBatch, R: string, f: FieldModel): void {
  const F = `${R}_${constName(f.name)}`;
  const bits = f.width === 1 ? `bit ${f.lsb}` : `bits ${f.msb}:${f.lsb}`;
  const traits = [f.access, f.selfclear ? "self-clearing" : "", f.enumName ? `values: ${f.enumName}` : ""]
    .filter(Boolean)
    .join(", ");
  addConst(file, F, hex(f.mask), `${docText(f.doc)} (${bits}; ${traits})`);
  if (f.width > 1)
    addConst(file, `${F}_SHIFT`, String(f.lsb), `${f.name}: position of the field's lowest bit`);
}

function addConst(file: StatementBatch, name: string, initializer: string, doc: string): void {
  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: [docText(doc)],
    declarations: [{ name, initializer }],
  });
}

/** Data tables describing every register, for the register file and for tools (trace decoding). */
function emitTables(file: StatementBatch, model: DeviceModel): void {
  file.addInterface({
    isExported: true,
    name: "RegisterInfo",
    docs: ["Access semantics of one register, as bit masks over its value."],
    properties: [
      ["name", "string"],
      ["offset", "number", "offset inside its block"],
      ["reset", "number"],
      ["readOnly", "number", "bits software cannot change"],
      ["readWrite", "number"],
      ["writeOneToClear", "number"],
      ["writeOneToSet", "number", "set by software, cleared by the device"],
      ["writeOnly", "number", "reads return 0"],
      ["reserved", "number", "reads return 0, writes ignored"],
      ["selfClearing", "number", "set by software, cleared by the device when done"],
      ["volatile", "boolean", "changed by the device: never cache"],
    ].map(([name, type, doc]) => ({ name: name!, type: type!, isReadonly: true, docs: doc ? [doc] : [] })),
  });
  file.addInterface({
    isExported: true,
    name: "BlockInfo",
    properties: [
      ["name", "string"],
      ["base", "number"],
      ["size", "number"],
      ["count", "number"],
      ["stride", "number"],
      ["registers", "readonly RegisterInfo[]"],
    ].map(([name, type]) => ({ name: name!, type: type!, isReadonly: true })),
  });
  const blocks = model.blocks.map((b) => {
    const regs = b.registers.map(
      (r) =>
        `{ name: ${str(r.name)}, offset: ${hex(r.offset, 2)}, reset: ${hex(r.reset)}, readOnly: ${hex(r.masks.ro)}, readWrite: ${hex(r.masks.rw)}, writeOneToClear: ${hex(r.masks.w1c)}, writeOneToSet: ${hex(r.masks.w1s)}, writeOnly: ${hex(r.masks.wo)}, reserved: ${hex(r.masks.reserved)}, selfClearing: ${hex(r.masks.selfclear)}, volatile: ${r.volatile} },`,
    );
    return `{ name: ${str(b.name)}, base: ${hex(b.offset, 3)}, size: ${hex(b.size, 3)}, count: ${b.count}, stride: ${hex(b.stride, 3)}, registers: [\n${regs.join("\n")}\n] },`;
  });
  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: ["Every register block of the window, in offset order."],
    declarations: [
      { name: "BLOCKS", type: "readonly BlockInfo[]", initializer: `[\n${blocks.join("\n")}\n]` },
    ],
  });
  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: ["Bytes of register window the register file models."],
    declarations: [{ name: "WINDOW_SIZE", initializer: hex(model.identity.barSize, 4) }],
  });
}

/**
 * The register file: one value per dword of the window plus per-dword masks, so an access costs
 * a few array loads whatever the register. Offsets that hold no register read 0 and ignore writes.
 */
function emitRegisterFile(file: StatementBatch, _model: DeviceModel): void {
  file.addFunction({
    isExported: true,
    name: "registerName",
    docs: ['The name of the register at `offset` ("host.GHC", "port3.CI"), or undefined.'],
    parameters: [{ name: "offset", type: "number" }],
    returnType: "string | undefined",
    statements: `for (const block of BLOCKS) {
      const relative = offset - block.base;
      if (relative < 0 || relative >= block.count * block.stride) continue;
      const index = Math.floor(relative / block.stride);
      const inside = relative - index * block.stride;
      const register = block.registers.find((r) => inside >= r.offset && inside < r.offset + 4);
      if (register === undefined) return undefined;
      return block.count > 1 ? \`\${block.name}\${index}.\${register.name}\` : \`\${block.name}.\${register.name}\`;
    }
    return undefined;`,
  });
  file.addClass({
    isExported: true,
    name: "RegisterFile",
    docs: [
      [
        "The register window with the access semantics of the spec. `write` and `read` are what",
        "software sees (write-1-to-clear, read-only bits kept, reserved bits zero); `get`, `set`,",
        "`setBits` and `clearBits` are the device's own side, with no semantics applied.",
      ].join("\n"),
    ],
    properties: [
      {
        name: "values",
        scope: undefined,
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
        docs: ["Current value of every dword."],
      },
      {
        name: "resets",
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
      },
      {
        name: "writable",
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
        docs: ["Bits a write replaces (read-write and write-only)."],
      },
      {
        name: "clearOnOne",
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
      },
      {
        name: "setOnOne",
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
      },
      {
        name: "readable",
        isReadonly: true,
        type: "Uint32Array",
        initializer: "new Uint32Array(WINDOW_SIZE >>> 2)",
        docs: ["Bits a read returns (not write-only, not reserved)."],
      },
    ].map((p) => ({ ...p, scope: undefined, isReadonly: true })),
    ctors: [
      {
        statements: `for (const block of BLOCKS) {
          for (let copy = 0; copy < block.count; copy++) {
            for (const r of block.registers) {
              const index = (block.base + copy * block.stride + r.offset) >>> 2;
              this.resets[index] = r.reset;
              this.writable[index] = (r.readWrite | r.writeOnly) >>> 0;
              this.clearOnOne[index] = r.writeOneToClear;
              this.setOnOne[index] = r.writeOneToSet;
              this.readable[index] = ~(r.writeOnly | r.reserved) >>> 0;
            }
          }
        }
        this.reset();`,
      },
    ],
    methods: [
      {
        name: "reset",
        docs: ["Every register back to its reset value."],
        returnType: "void",
        statements: "this.values.set(this.resets);",
      },
      {
        name: "read",
        docs: ["A software read of `size` bytes (1, 2 or 4) at `offset`."],
        parameters: [
          { name: "offset", type: "number" },
          { name: "size", type: "number" },
        ],
        returnType: "number",
        statements: `const index = offset >>> 2;
        if (index >= this.values.length) return 0;
        const value = (this.values[index]! & this.readable[index]!) >>> 0;
        if (size >= 4) return value;
        const shift = (offset & 3) * 8;
        return (value >>> shift) & (size === 1 ? 0xff : 0xffff);`,
      },
      {
        name: "write",
        docs: [
          "A software write of `size` bytes (1, 2 or 4) at `offset`, with the access semantics.\nReturns the register's value before the write.",
        ],
        parameters: [
          { name: "offset", type: "number" },
          { name: "size", type: "number" },
          { name: "value", type: "number" },
        ],
        returnType: "number",
        statements: `const index = offset >>> 2;
        if (index >= this.values.length) return 0;
        const shift = (offset & 3) * 8;
        const lanes = size >= 4 ? 0xffffffff : ((size === 1 ? 0xff : 0xffff) << shift) >>> 0;
        const incoming = (value << shift) & lanes;
        const old = this.values[index]!;
        const replace = this.writable[index]! & lanes;
        let next = (old & ~replace) | (incoming & replace);
        next &= ~(incoming & this.clearOnOne[index]!);
        next |= incoming & this.setOnOne[index]!;
        this.values[index] = next >>> 0;
        return old;`,
      },
      {
        name: "get",
        docs: ["The device's view of the dword at `offset`: every bit as stored."],
        parameters: [{ name: "offset", type: "number" }],
        returnType: "number",
        statements: "return this.values[offset >>> 2] ?? 0;",
      },
      {
        name: "set",
        docs: ["The device sets the dword at `offset` to `value`, bypassing the access semantics."],
        parameters: [
          { name: "offset", type: "number" },
          { name: "value", type: "number" },
        ],
        returnType: "void",
        statements: "this.values[offset >>> 2] = value >>> 0;",
      },
      {
        name: "setBits",
        parameters: [
          { name: "offset", type: "number" },
          { name: "bits", type: "number" },
        ],
        returnType: "void",
        statements: "const index = offset >>> 2;\nthis.values[index] = (this.values[index]! | bits) >>> 0;",
      },
      {
        name: "clearBits",
        parameters: [
          { name: "offset", type: "number" },
          { name: "bits", type: "number" },
        ],
        returnType: "void",
        statements: "const index = offset >>> 2;\nthis.values[index] = (this.values[index]! & ~bits) >>> 0;",
      },
      {
        name: "resetRange",
        docs: ["Resets the registers in [offset, offset + size): a port reset, for example."],
        parameters: [
          { name: "offset", type: "number" },
          { name: "size", type: "number" },
        ],
        returnType: "void",
        statements:
          "const first = offset >>> 2;\nthis.values.set(this.resets.subarray(first, first + (size >>> 2)), first);",
      },
    ],
  });
}
