/**
 * Property tests: analyzeSpec never throws, never fails internally, and every diagnostic points
 * inside the text, for random bytes and for random token-level mutations of spec/ahci.med.
 * FUZZ_RUNS=5000 npx vitest run test/grammar/robustness.test.ts runs longer searches (mind the
 * 60 s test timeout).
 */

import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Diagnostic } from "../../grammar/diagnostics.ts";
import { analyzeSpec } from "../../grammar/index.ts";
import { medLexer } from "../../grammar/lexer.ts";

const ahci = readFileSync(new URL("../../spec/ahci.med", import.meta.url), "utf8");
/** [start, end) offsets of every token of ahci.med: mutations cut and paste whole tokens. */
const tokens = medLexer
  .tokenize(ahci)
  .tokens.map((t) => [t.startOffset, t.startOffset + t.image.length] as const);

function checkDiagnostics(text: string, diagnostics: readonly Diagnostic[]): void {
  const lines = text.split(/\r?\n/);
  for (const d of diagnostics) {
    expect(d.message.startsWith("internal error"), d.message).toBe(false);
    expect(d.line, d.message).toBeGreaterThanOrEqual(1);
    expect(d.line, d.message).toBeLessThanOrEqual(lines.length);
    expect(d.column, d.message).toBeGreaterThanOrEqual(1);
    expect(d.column, d.message).toBeLessThanOrEqual(lines[d.line - 1]!.length + 1);
    expect(d.length, d.message).toBeGreaterThanOrEqual(1);
  }
}

function analyzeChecked(text: string): void {
  let result: ReturnType<typeof analyzeSpec> | undefined;
  expect(() => {
    result = analyzeSpec(text, "fuzz.med");
  }).not.toThrow();
  checkDiagnostics(text, result!.diagnostics);
  if (result!.model !== null) expect(result!.diagnostics.every((d) => d.severity === "warning")).toBe(true);
}

type Mutation =
  | { kind: "delete"; from: number; count: number }
  | { kind: "insert"; from: number; count: number; at: number }
  | { kind: "duplicate"; from: number; count: number }
  | { kind: "text"; at: number; text: string };

function applyMutation(text: string, m: Mutation): string {
  const n = tokens.length;
  const range = (from: number, count: number) => {
    const first = tokens[from % n]!;
    const last = tokens[Math.min(n - 1, (from % n) + count)]!;
    return [first[0], last[1]] as const;
  };
  switch (m.kind) {
    case "delete": {
      const [a, b] = range(m.from, m.count);
      return text.slice(0, a) + text.slice(b);
    }
    case "insert": {
      const [a, b] = range(m.from, m.count);
      const at = tokens[m.at % n]![0];
      return `${text.slice(0, at)}${text.slice(a, b)} ${text.slice(at)}`;
    }
    case "duplicate": {
      const [a, b] = range(m.from, m.count);
      return `${text.slice(0, b)} ${text.slice(a, b)}${text.slice(b)}`;
    }
    case "text": {
      const at = tokens[m.at % n]![0];
      return text.slice(0, at) + m.text + text.slice(at);
    }
  }
}

const index = fc.nat({ max: 100_000 });
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("delete" as const), from: index, count: fc.nat({ max: 40 }) }),
  fc.record({ kind: fc.constant("insert" as const), from: index, count: fc.nat({ max: 40 }), at: index }),
  fc.record({ kind: fc.constant("duplicate" as const), from: index, count: fc.nat({ max: 40 }) }),
  fc.record({
    kind: fc.constant("text" as const),
    at: index,
    text: fc.oneof(
      fc.constantFrom(
        "{",
        "}",
        ";",
        "[",
        "]",
        "@",
        "0x",
        "99999999999999999999",
        '"',
        "/*",
        "\r\n",
        "\u0000",
        "->",
      ),
      fc.string({ maxLength: 8 }),
    ),
  }),
);

describe("robustness", () => {
  it("random byte strings", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        analyzeChecked(Buffer.from(bytes).toString("utf8"));
        analyzeChecked(Buffer.from(bytes).toString("latin1"));
      }),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 300) },
    );
  });

  it("random text made of spec tokens and noise", () => {
    const word = fc.constantFrom(
      "device",
      "enum",
      "block",
      "reg",
      "struct",
      "link",
      "commands",
      "mediator",
      "value",
      "const",
      "data",
      "length",
      "align",
      "size",
      "stride",
      "width",
      "ro",
      "rw",
      "w1c",
      "enum",
      "u8",
      "u32",
      "u64",
      "bytes",
      "read",
      "count",
      "zero",
      "queued",
      "tag",
      "trap",
      "slots",
      "complete",
      "interrupt",
      "with",
      "X",
      "Y",
      "port",
      "CAP",
      "0",
      "31",
      "0x100",
      "{",
      "}",
      "[",
      "]",
      ":",
      ";",
      "=",
      "@",
      ".",
      ",",
      "->",
      "&",
      "+",
      '"doc"',
      "\n",
    );
    fc.assert(
      fc.property(fc.array(word, { maxLength: 200 }), (words) => analyzeChecked(words.join(" "))),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 300) },
    );
  });

  it("random token-level mutations of spec/ahci.med", () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        analyzeChecked(mutations.reduce(applyMutation, ahci));
      }),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 200) },
    );
  });

  it("every prefix cut of spec/ahci.med at a token boundary", () => {
    for (let i = 0; i < tokens.length; i += 37) analyzeChecked(ahci.slice(0, tokens[i]![0]));
  });
});
