import { type Diagnostic, hasErrors } from "../grammar/diagnostics.ts";
import { analyzeSpec } from "../grammar/index.ts";
import { emitCommands } from "./emit/commands.ts";
import { doNotEditHeader, type GeneratedFile } from "./emit/common.ts";
import { emitSlotsMediator, MediatorSpecError } from "./emit/mediator-slots.ts";
import { emitReference } from "./emit/reference.ts";
import { emitRegisters } from "./emit/registers.ts";
import { emitStructs } from "./emit/structs.ts";
import type { DeviceModel } from "./model.ts";

export type { GeneratedFile } from "./emit/common.ts";

export interface CompileOptions {
  /** The spec's file name, used in diagnostics and in the do-not-edit headers. */
  readonly fileName: string;
  /** Also return the checked model as model.json. */
  readonly emitModel?: boolean;
}

export interface CompileResult {
  /** Files relative to the output directory, in a fixed order; empty when there are errors. */
  readonly files: readonly GeneratedFile[];
  readonly diagnostics: readonly Diagnostic[];
  readonly model: DeviceModel | null;
}

/**
 * Compiles one spec to TypeScript and Markdown. Never throws for bad input, never prints and
 * never exits: build steps call it as a library, the CLI is a thin layer over it.
 */
export function compileSpec(source: string, options: CompileOptions): CompileResult {
  const { model, diagnostics } = analyzeSpec(source, options.fileName);
  if (model === null || hasErrors(diagnostics)) return { files: [], diagnostics, model: null };
  try {
    return { files: emitAll(model, options), diagnostics, model };
  } catch (error) {
    if (!(error instanceof MediatorSpecError)) throw error;
    const span = model.mediator?.span ?? { line: 1, column: 1, length: 1 };
    const diagnostic: Diagnostic = {
      file: options.fileName,
      ...span,
      severity: "error",
      message: error.message,
    };
    return { files: [], diagnostics: [...diagnostics, diagnostic], model: null };
  }
}

function emitAll(model: DeviceModel, options: CompileOptions): GeneratedFile[] {
  const files: GeneratedFile[] = [
    emitRegisters(model, "registers.ts"),
    emitStructs(model, "structs.ts"),
    emitCommands(model, "commands.ts"),
  ];
  if (model.mediator) files.push(emitSlotsMediator(model, "mediator.ts"));
  files.push(emitIndex(model, files));
  files.push(emitReference(model, "reference.md"));
  if (options.emitModel) files.push({ path: "model.json", content: `${JSON.stringify(model, null, 2)}\n` });
  return files;
}

function emitIndex(model: DeviceModel, files: readonly GeneratedFile[]): GeneratedFile {
  const lines = files.filter((f) => f.path.endsWith(".ts")).map((f) => `export * from "./${f.path}";`);
  return { path: "index.ts", content: `${doNotEditHeader(model.source)}\n\n${lines.join("\n")}\n` };
}
