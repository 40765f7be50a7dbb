/**
 * Shared set-up of the generator tests: the two specs, their compiled output and checked models,
 * and the naming rules of the generated code, restated here (not imported from generator/emit)
 * so that a change of naming in the generator shows up as a failing test.
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type CompileResult, compileSpec } from "../../generator/compile.ts";
import type { DeviceModel, MemberModel, StructModel } from "../../generator/model.ts";
import { analyzeSpec } from "../../grammar/index.ts";

/** Absolute path of the project root (test/generator/../..). */
export const root = fileURLToPath(new URL("../../", import.meta.url));

export const AHCI_SPEC = "spec/ahci.med";
export const QUEUE_SPEC = "test/fixtures/specs/queue-device.med";

export function readSpec(file: string): string {
  return readFileSync(join(root, file), "utf8");
}

/** Compiles a spec of the project under its project-relative name, as `npm run generate` does. */
export function compileFile(file: string, emitModel = false): CompileResult {
  return compileSpec(readSpec(file), { fileName: file, emitModel });
}

/**
 * The checked model of a spec that must check cleanly: the checker alone, which is what
 * compileSpec hands the emitters (and much faster than emitting every file).
 */
export function modelOf(file: string): DeviceModel {
  const { model, diagnostics } = analyzeSpec(readSpec(file), file);
  if (model === null || diagnostics.length > 0)
    throw new Error(`${file} did not check: ${JSON.stringify(diagnostics)}`);
  return model;
}

/** "LBA48" -> "Lba48", "NCQ_TAG" -> "NcqTag", "CommandHeader" -> "CommandHeader". */
export function pascal(name: string): string {
  if (/^[A-Z][a-zA-Z0-9]*$/.test(name) && /[a-z]/.test(name)) return name;
  return name
    .toLowerCase()
    .split(/[_\s]+/)
    .filter((w) => w.length > 0)
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join("");
}

/** "RegH2DFis" -> "regH2DFis", "ata" -> "ata". */
export function camel(name: string): string {
  const p = pascal(name);
  return p[0]!.toLowerCase() + p.slice(1);
}

/** Names of a value's getter and setter: regH2DFisLba48 / setRegH2DFisLba48. */
export function valueAccessorNames(struct: string, value: string): { get: string; set: string } {
  const get = `${camel(struct)}${pascal(value)}`;
  return { get, set: `set${get[0]!.toUpperCase()}${get.slice(1)}` };
}

/** Size in bytes of a member of the fixed part (tail arrays take no room there). */
export function memberSize(m: MemberModel, structs: ReadonlyMap<string, StructModel>): number {
  switch (m.kind) {
    case "scalar":
    case "bytes":
      return m.size;
    case "struct":
      return m.count * structs.get(m.struct)!.size;
    case "tail":
      return 0;
  }
}

/**
 * The bytes of a structure's fixed part that some member (or a member of an embedded structure)
 * holds: the bytes a codec reads and writes. The others are reserved gaps.
 */
export function coveredBytes(s: StructModel, structs: ReadonlyMap<string, StructModel>): boolean[] {
  const covered = new Array<boolean>(s.size).fill(false);
  for (const m of s.members) {
    if (m.kind === "tail") continue;
    if (m.kind === "struct") {
      const inner = structs.get(m.struct)!;
      const innerCovered = coveredBytes(inner, structs);
      for (let i = 0; i < m.count; i++)
        innerCovered.forEach((c, b) => {
          if (c) covered[m.offset + i * inner.size + b] = true;
        });
    } else {
      for (let b = 0; b < m.size; b++) covered[m.offset + b] = true;
    }
  }
  return covered;
}

/** A fresh directory outside the project (so no lint or type-check of the project sees it). */
export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `medic-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Writes compiled files into `dir`; returns `dir`. */
export function writeFiles(dir: string, files: readonly { path: string; content: string }[]): string {
  for (const f of files) writeFileSync(join(dir, f.path), f.content);
  return dir;
}

/** Imports a module written to disk at run time (the compiled queue-device output). */
export async function importFile<T>(path: string): Promise<T> {
  return (await import(/* @vite-ignore */ pathToFileURL(path).href)) as T;
}

/** A loosely typed view of a generated module, for looking functions up by name. */
export type ModuleRecord = Readonly<Record<string, unknown>>;

export function fn<F>(module: ModuleRecord, name: string): F {
  const f = module[name];
  if (typeof f !== "function") throw new Error(`the generated module exports no function ${name}`);
  return f as F;
}
