/**
 * compileSpec as a library: whatever the input, it returns files and diagnostics as data. It
 * never throws, never prints (process.stdout / process.stderr / console are spied on) and never
 * exits (process.exit is spied on and made to throw).
 */

import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { type CompileResult, compileSpec } from "../../generator/compile.ts";
import type { DeviceModel } from "../../generator/model.ts";
import { AHCI_SPEC, modelOf, QUEUE_SPEC, readSpec } from "./helpers.ts";

const ahciSource = readSpec(AHCI_SPEC);

let spies: MockInstance[] = [];

beforeEach(() => {
  spies = [
    vi.spyOn(process.stdout, "write"),
    vi.spyOn(process.stderr, "write"),
    vi.spyOn(process, "exit").mockImplementation(((code?: number) => {
      throw new Error(`process.exit(${code}) called`);
    }) as never),
    vi.spyOn(console, "log"),
    vi.spyOn(console, "error"),
    vi.spyOn(console, "warn"),
    vi.spyOn(console, "info"),
    vi.spyOn(console, "debug"),
  ];
});

afterEach(() => {
  for (const s of spies) s.mockRestore();
});

function expectSilent(): void {
  for (const s of spies) expect(s, s.getMockName()).not.toHaveBeenCalled();
}

/** compileSpec, asserting it returns (no throw) and that the result is well-formed data. */
function compile(source: string, fileName: string, emitModel = false): CompileResult {
  let result: CompileResult | undefined;
  expect(() => {
    result = compileSpec(source, { fileName, emitModel });
  }).not.toThrow();
  const r = result!;
  expect(Array.isArray(r.files)).toBe(true);
  expect(Array.isArray(r.diagnostics)).toBe(true);
  for (const d of r.diagnostics) {
    expect(d.file).toBe(fileName);
    expect(Number.isInteger(d.line) && d.line >= 1, `line of ${d.message}`).toBe(true);
    expect(Number.isInteger(d.column) && d.column >= 1, `column of ${d.message}`).toBe(true);
    expect(typeof d.message === "string" && d.message.length > 0).toBe(true);
    expect(d.message.startsWith("internal error"), d.message).toBe(false);
  }
  const errors = r.diagnostics.filter((d) => d.severity === "error");
  if (errors.length > 0) {
    expect(r.files).toEqual([]);
    expect(r.model).toBeNull();
  } else {
    expect(r.files.length).toBeGreaterThan(0);
    expect(r.model).not.toBeNull();
  }
  for (const f of r.files) {
    expect(typeof f.path).toBe("string");
    expect(typeof f.content).toBe("string");
    expect(f.path.includes("/") || f.path.includes("\\"), `${f.path} is a plain file name`).toBe(false);
  }
  return r;
}

/** The 1-based line of the first line of `source` containing `needle`. */
function lineOf(source: string, needle: string): number {
  const index = source.split("\n").findIndex((l) => l.includes(needle));
  if (index < 0) throw new Error(`no line contains ${needle}`);
  return index + 1;
}

describe("compileSpec on good specs", () => {
  // One AHCI compilation (the slow one) for the tests of this block.
  let ahci: CompileResult;

  it("the AHCI spec: six files, no diagnostics, the checked model; nothing printed", () => {
    ahci = compile(ahciSource, AHCI_SPEC, true);
    expectSilent();
    expect(ahci.diagnostics).toEqual([]);
    expect(ahci.files.map((f) => f.path)).toEqual([
      "registers.ts",
      "structs.ts",
      "commands.ts",
      "mediator.ts",
      "index.ts",
      "reference.md",
      "model.json",
    ]);
    expect(ahci.model).toEqual(modelOf(AHCI_SPEC));
  });

  it("emitModel: model.json parses, is the model, and has 32 ports", () => {
    const json = ahci.files.find((f) => f.path === "model.json");
    expect(json).toBeDefined();
    const parsed = JSON.parse(json!.content) as DeviceModel;
    expect(parsed).toEqual(JSON.parse(JSON.stringify(ahci.model)));
    expect(parsed.source).toBe(AHCI_SPEC);
    const port = parsed.blocks.find((b) => b.name === "port");
    expect(port?.count).toBe(32);
    expect(port?.stride).toBe(0x80);
    expect(json!.content.endsWith("}\n")).toBe(true);
  });

  it("without emitModel there is no model.json", () => {
    const r = compile(readSpec(QUEUE_SPEC), QUEUE_SPEC);
    expectSilent();
    expect(r.files.map((f) => f.path)).not.toContain("model.json");
    expect(r.files.map((f) => f.path)).toContain("index.ts");
    // No mediator section, no mediator.ts, and the index does not export one.
    expect(r.files.map((f) => f.path)).not.toContain("mediator.ts");
    expect(r.files.find((f) => f.path === "index.ts")!.content).not.toContain("mediator");
  });
});

describe("compileSpec on bad input: diagnostics as data", () => {
  it("an empty string", () => {
    const r = compile("", "empty.med");
    expectSilent();
    expect(r.files).toEqual([]);
    expect(r.diagnostics.length).toBeGreaterThan(0);
    expect(r.diagnostics[0]).toMatchObject({ file: "empty.med", line: 1, column: 1, severity: "error" });
  });

  it("binary garbage", () => {
    const bytes = Buffer.from(
      Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24), // deterministic noise
    );
    for (const text of [
      bytes.toString("latin1"),
      bytes.toString("utf8"),
      "\u0000\u0000\u0000",
      "\uFEFF",
      "\uD800",
      "device",
      "}}}}{{{{",
    ]) {
      const r = compile(text, "garbage.med");
      expect(r.files).toEqual([]);
      expect(r.diagnostics.length).toBeGreaterThan(0);
    }
    expectSilent();
  });

  it("random strings never throw, print or exit", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 300 }),
          fc.string({ unit: "grapheme", maxLength: 300 }),
          fc
            .array(
              fc.constantFrom(
                "device d { vendor = 1; device = 2; }",
                "block b @ 0 size 0x10 {",
                "reg R @ 0 : rw {",
                "F [3:0] = 1;",
                "}",
                "struct S size 4 {",
                "A @ 0 u32;",
                "enum E { X = 1; }",
                "@",
                ";",
                "0x",
                '"',
                "[",
              ),
              { maxLength: 30 },
            )
            .map((parts) => parts.join("\n")),
        ),
        (text) => {
          compile(text, "random.med");
        },
      ),
      { numRuns: 300 },
    );
    expectSilent();
  });

  it("a spec with a syntax error: no files, a diagnostic at its line and column", () => {
    const source = ahciSource.replace("reg CAP @ 0x00 : ro", "reg CAP @ 0x00 : rq");
    const r = compile(source, "bad/syntax.med");
    expectSilent();
    expect(r.files).toEqual([]);
    expect(r.model).toBeNull();
    const line = lineOf(source, "reg CAP @ 0x00 : rq");
    const first = r.diagnostics[0]!;
    expect(first).toMatchObject({ file: "bad/syntax.med", line, severity: "error" });
    expect(first.column).toBe(source.split("\n")[line - 1]!.indexOf("rq") + 1);
    expect(first.message).toContain("rq");
  });

  it("a spec with a name error: no files, a diagnostic at its line and column", () => {
    const source = ahciSource.replace("trap write port.CI      issue", "trap write port.CIX     issue");
    const r = compile(source, "bad/names.med");
    expectSilent();
    expect(r.files).toEqual([]);
    expect(r.model).toBeNull();
    const line = lineOf(source, "port.CIX");
    expect(r.diagnostics).toHaveLength(1);
    expect(r.diagnostics[0]).toMatchObject({ file: "bad/names.med", line, severity: "error" });
    expect(r.diagnostics[0]!.column).toBe(source.split("\n")[line - 1]!.indexOf("CIX") + 1);
    expect(r.diagnostics[0]!.message).toContain("CIX");
  });

  it("a spec the checker accepts but the mediator emitter cannot use: a diagnostic, not an exception", () => {
    const source = ahciSource.replace(/^\s*queue\s+port\.SACT;\s*$/m, "");
    const r = compile(source, "noqueue.med");
    expectSilent();
    expect(r.files).toEqual([]);
    expect(r.diagnostics).toHaveLength(1);
    expect(r.diagnostics[0]).toMatchObject({
      file: "noqueue.med",
      line: lineOf(source, 'mediator slots "'),
      severity: "error",
    });
    expect(r.diagnostics[0]!.message).toMatch(/queue/);
  });

  it("a non-string source is reported, not thrown", () => {
    for (const bad of [undefined, null, 42, {}]) {
      const r = compile(bad as unknown as string, "odd.med");
      expect(r.files).toEqual([]);
    }
    expectSilent();
  });
});
