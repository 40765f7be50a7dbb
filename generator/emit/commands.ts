import { VariableDeclarationKind } from "ts-morph";
import type { CommandModel, CommandSetModel, DeviceModel, StructModel } from "../model.ts";
import {
  constName,
  docText,
  finish,
  type GeneratedFile,
  hex,
  memberName,
  newProject,
  newSourceFile,
  str,
  typeName,
} from "./common.ts";

/**
 * commands.ts: per command set, the opcode table, a decoder from the command structure (an H2D
 * FIS) to a discriminated union, and an encoder that builds a command for the mediator's own
 * use. Any opcode the spec does not name decodes as `{ kind: "other" }`, never an exception.
 */
export function emitCommands(model: DeviceModel, path: string): GeneratedFile {
  const file = newSourceFile(newProject(), path);
  const structs = new Map(model.structs.map((s) => [s.name, s]));
  const imports = new Set<string>();
  for (const set of model.commandSets) emitSet(file, set, structs.get(set.struct)!, imports);
  file.insertImportDeclaration(0, { moduleSpecifier: "./structs.ts", namedImports: [...imports].sort() });
  return finish(file, model.source, path);
}

function emitSet(
  file: import("ts-morph").SourceFile,
  set: CommandSetModel,
  struct: StructModel,
  imports: Set<string>,
): void {
  const T = typeName(set.name);
  const S = struct.name;
  imports.add(`type ${S}`);
  imports.add(`empty${S}`);
  const commands = [...set.commands].sort((a, b) => a.opcode - b.opcode);

  file.addVariableStatement({
    isExported: true,
    declarationKind: VariableDeclarationKind.Const,
    docs: [`${docText(set.doc)}: opcode of every command the spec names.`],
    declarations: [
      {
        name: `${T}Opcode`,
        initializer: `{\n${commands.map((c) => `${c.name}: ${hex(c.opcode, 2)},`).join("\n")}\n} as const`,
      },
    ],
  });
  file.addTypeAlias({ isExported: true, name: `${T}CommandName`, type: `keyof typeof ${T}Opcode` });

  file.addTypeAlias({
    isExported: true,
    name: `${T}Command`,
    docs: [`A decoded ${set.name} command: what it does, to which sectors, how the data moves.`],
    type: [
      `{ readonly kind: "read" | "write"; readonly name: ${T}CommandName; readonly opcode: number; readonly lba: number; readonly sectors: number; readonly dma: boolean; readonly queued: boolean; readonly tag: number | null }`,
      `{ readonly kind: "flush" | "nondata"; readonly name: ${T}CommandName; readonly opcode: number }`,
      `{ readonly kind: "data_in"; readonly name: ${T}CommandName; readonly opcode: number; readonly bytes: number; readonly dma: boolean }`,
      `{ readonly kind: "trim"; readonly name: ${T}CommandName; readonly opcode: number; readonly blocks: number; readonly dma: boolean }`,
      `{ readonly kind: "other"; readonly opcode: number }`,
    ].join("\n| "),
  });

  const cases = commands.map(
    (c) => `case ${hex(c.opcode, 2)}:\nreturn ${decodeLiteral(c, struct, imports)};`,
  );
  file.addFunction({
    isExported: true,
    name: `decode${T}Command`,
    docs: [`Decodes the command in \`${memberName(S)}\` by its ${set.member} byte.`],
    parameters: [{ name: "command", type: S }],
    returnType: `${T}Command`,
    statements: `switch (command.${set.member}) {\n${cases.join("\n")}\ndefault:\nreturn { kind: "other", opcode: command.${set.member} };\n}`,
  });

  emitEncoder(file, set, struct, commands, imports);
}

function valueExpr(from: string, struct: StructModel, imports: Set<string>): string {
  const value = struct.values.find((v) => v.name === from);
  if (value) {
    const fn = `${memberName(struct.name)}${typeName(from)}`;
    imports.add(fn);
    return `${fn}(command)`;
  }
  return `command.${from}`;
}

function setterStatement(from: string, struct: StructModel, target: string, imports: Set<string>): string {
  const value = struct.values.find((v) => v.name === from);
  if (value) {
    const fn = `set${typeName(struct.name)}${typeName(from)}`;
    imports.add(fn);
    return `${fn}(command, ${target});`;
  }
  return `command.${from} = ${target};`;
}

function countExpr(c: CommandModel, struct: StructModel, imports: Set<string>): string {
  if (!c.count) return "0";
  const raw = valueExpr(c.count.from, struct, imports);
  return `countOf(${raw}, ${c.count.zeroMeans}, ${c.count.add ?? 0})`;
}

function decodeLiteral(c: CommandModel, struct: StructModel, imports: Set<string>): string {
  const head = `name: ${str(c.name)}, opcode: ${hex(c.opcode, 2)}`;
  const dma = c.transfer === "dma";
  switch (c.kind) {
    case "read":
    case "write": {
      const lba = c.lba ? valueExpr(c.lba, struct, imports) : "0";
      const tag = c.tag ? valueExpr(c.tag, struct, imports) : "null";
      return `{ kind: ${str(c.kind)}, ${head}, lba: ${lba}, sectors: ${countExpr(c, struct, imports)}, dma: ${dma}, queued: ${c.queued}, tag: ${tag} }`;
    }
    case "flush":
    case "nondata":
      return `{ kind: ${str(c.kind)}, ${head} }`;
    case "data_in":
      return `{ kind: "data_in", ${head}, bytes: ${c.bytes ?? 0}, dma: ${dma} }`;
    case "trim":
      return `{ kind: "trim", ${head}, blocks: ${countExpr(c, struct, imports)}, dma: ${dma} }`;
  }
}

/** The encoder: the mediator builds its own commands from a name and a range. */
function emitEncoder(
  file: import("ts-morph").SourceFile,
  set: CommandSetModel,
  struct: StructModel,
  commands: readonly CommandModel[],
  imports: Set<string>,
): void {
  const T = typeName(set.name);
  const presets = set.presets.map((p) => {
    const member = struct.members.find((m) => m.name === p.member);
    const field =
      p.field && member?.kind === "scalar" ? member.fields.find((f) => f.name === p.field) : undefined;
    if (!field) return `command.${p.member} = ${hex(p.value, 2)};`;
    return `command.${p.member} = ((command.${p.member} & ~${hex(field.mask, 2)}) | (${hex(p.value, 2)} << ${field.lsb})) >>> 0;`;
  });
  const cases = commands
    .map((c) => {
      const lines: string[] = [];
      if (c.lba) lines.push(setterStatement(c.lba, struct, "request.lba ?? 0", imports));
      if (c.count) {
        lines.push(
          setterStatement(
            c.count.from,
            struct,
            c.count.zeroMeans > 0
              ? `(request.sectors ?? 0) === ${c.count.zeroMeans} ? 0 : Math.max(0, (request.sectors ?? ${c.count.add ?? 0}) - ${c.count.add ?? 0})`
              : `Math.max(0, (request.sectors ?? ${c.count.add ?? 0}) - ${c.count.add ?? 0})`,
            imports,
          ),
        );
      }
      if (c.tag) lines.push(setterStatement(c.tag, struct, "request.tag ?? 0", imports));
      if (lines.length === 0) return null;
      return `case ${str(c.name)}:\n${lines.join("\n")}\nbreak;`;
    })
    .filter((x): x is string => x !== null);
  file.addFunction({
    isExported: true,
    name: `encode${T}Command`,
    docs: [
      `Builds a ${struct.name} for \`name\` with its range (sectors of ${commands.find((c) => c.count)?.count?.zeroMeans ?? "n"} encode as 0) and the set's presets.`,
    ],
    parameters: [
      { name: "name", type: `${T}CommandName` },
      {
        name: "request",
        type: "{ readonly lba?: number; readonly sectors?: number; readonly tag?: number }",
        initializer: "{}",
      },
    ],
    returnType: struct.name,
    statements: [
      `const command = empty${struct.name}();`,
      ...presets,
      `command.${set.member} = ${T}Opcode[name];`,
      cases.length ? `switch (name) {\n${cases.join("\n")}\ndefault:\nbreak;\n}` : "",
      "return command;",
    ],
  });
  if (!file.getFunction("countOf")) {
    file.addFunction({
      name: "countOf",
      docs: [
        "A command's count from its raw field: 0 may mean the largest count (ATA: 256 or 65536), and 0-based counts add one (NVMe).",
      ],
      parameters: [
        { name: "raw", type: "number" },
        { name: "zeroMeans", type: "number" },
        { name: "add", type: "number" },
      ],
      returnType: "number",
      statements: "return raw === 0 && zeroMeans > 0 ? zeroMeans : raw + add;",
    });
  }
  void constName;
}
