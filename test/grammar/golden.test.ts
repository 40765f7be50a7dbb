/**
 * Golden diagnostics of the broken specs in test/fixtures/specs/broken: each NAME.med is checked
 * and its formatDiagnostics text compared with NAME.expected.
 *
 * After a deliberate change to messages, regenerate the goldens with
 *
 *   UPDATE_GOLDEN=1 npx vitest run test/grammar
 *
 * and review every changed .expected file by eye before committing.
 */

import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { analyzeSpec, formatDiagnostics } from "../../grammar/index.ts";

const dir = "test/fixtures/specs/broken";
const root = new URL("../../", import.meta.url);
const update = process.env.UPDATE_GOLDEN === "1";
const specs = readdirSync(new URL(dir, root))
  .filter((f) => f.endsWith(".med"))
  .sort();

describe("golden diagnostics of broken specs", () => {
  it("has at least 15 broken specs", () => {
    expect(specs.length).toBeGreaterThanOrEqual(15);
  });

  for (const spec of specs) {
    it(spec, () => {
      const file = `${dir}/${spec}`;
      const text = readFileSync(new URL(file, root), "utf8");
      const { model, diagnostics } = analyzeSpec(text, file);
      const actual = formatDiagnostics(diagnostics, new Map([[file, text]]));

      expect(model).toBeNull();
      expect(diagnostics.some((d) => d.severity === "error")).toBe(true);
      expect(diagnostics.every((d) => !d.message.startsWith("internal error"))).toBe(true);

      const expectedUrl = new URL(file.replace(/\.med$/, ".expected"), root);
      if (update || !existsSync(expectedUrl)) {
        writeFileSync(expectedUrl, actual);
        if (!update) throw new Error(`wrote missing golden ${expectedUrl.pathname}; review it and run again`);
      }
      expect(actual).toBe(readFileSync(expectedUrl, "utf8"));
    });
  }
});
