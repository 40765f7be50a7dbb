import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import { compileSpec } from "../../generator/compile.ts";
import { formatDiagnostics, hasErrors } from "../../grammar/diagnostics.ts";
import { CliError } from "./errors.ts";

/**
 * `medic compile SPEC --out DIR [--check]` and `medic check SPEC...`: diagnostics on stderr in
 * FILE:LINE:COL form, exit 1 on any error. `--check` writes nothing and lists stale files.
 */
export async function compileCommand(args: string[], mode: "compile" | "check"): Promise<number> {
  const { values, positionals } = parseOrThrow(args);
  if (positionals.length === 0) throw new CliError(`${mode}: no spec file given`);
  if (mode === "compile" && positionals.length !== 1)
    throw new CliError("compile takes exactly one spec file");
  if (mode === "compile" && !values.out) throw new CliError("compile needs --out DIR");

  let failed = false;
  for (const file of positionals) {
    const source = await readSpec(file);
    if (source === null) {
      process.stderr.write(`${file}: error: cannot read the file\n`);
      failed = true;
      continue;
    }
    const result = compileSpec(source, { fileName: file, emitModel: values["emit-model"] === true });
    process.stderr.write(formatDiagnostics(result.diagnostics, new Map([[file, source]])));
    if (hasErrors(result.diagnostics) || result.model === null) {
      failed = true;
      continue;
    }
    if (values.summary) printSummary(result.model, result.files.length);
    if (mode === "check") continue;
    const out = values.out!;
    if (values.check) {
      const stale = await staleFiles(out, result.files);
      for (const path of stale) process.stdout.write(`would change: ${path}\n`);
      if (stale.length > 0) failed = true;
      continue;
    }
    await mkdir(out, { recursive: true });
    for (const f of result.files) await writeFile(join(out, f.path), f.content);
    process.stdout.write(`wrote ${result.files.length} files to ${relative(process.cwd(), out) || "."}\n`);
  }
  return failed ? 1 : 0;
}

function parseOrThrow(args: string[]) {
  try {
    return parseArgs({
      args,
      allowPositionals: true,
      options: {
        out: { type: "string" },
        check: { type: "boolean" },
        "emit-model": { type: "boolean" },
        summary: { type: "boolean" },
      },
    });
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
}

async function readSpec(file: string): Promise<string | null> {
  try {
    return await readFile(file, "utf8");
  } catch {
    return null;
  }
}

async function staleFiles(
  out: string,
  files: readonly { path: string; content: string }[],
): Promise<string[]> {
  const stale: string[] = [];
  for (const f of files) {
    const current = await readFile(join(out, f.path), "utf8").catch(() => null);
    if (current !== f.content) stale.push(join(out, f.path));
  }
  return stale;
}

function printSummary(model: NonNullable<ReturnType<typeof compileSpec>["model"]>, files: number): void {
  const registers = model.blocks.reduce((n, b) => n + b.registers.length * b.count, 0);
  const fields = model.blocks.reduce((n, b) => n + b.registers.reduce((m, r) => m + r.fields.length, 0), 0);
  const commands = model.commandSets.reduce((n, c) => n + c.commands.length, 0);
  process.stdout.write(
    [
      `${model.name}: ${model.doc}`,
      `  ${model.blocks.length} register blocks, ${registers} registers (${fields} distinct fields)`,
      `  ${model.structs.length} structures, ${model.links.length} links, ${commands} commands`,
      `  mediator: ${model.mediator ? `${model.mediator.protocol}, ${model.mediator.traps.length} traps` : "none"}`,
      `  ${files} files would be generated`,
      "",
    ].join("\n"),
  );
}
