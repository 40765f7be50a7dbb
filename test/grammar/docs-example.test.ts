import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { compileSpec } from "../../generator/compile.ts";

/** docs/language.md's worked example must keep compiling, and must still be the doc's text. */
describe("the worked example of docs/language.md", () => {
  const spec = readFileSync(new URL("../fixtures/specs/tinydisk.med", import.meta.url), "utf8");
  const doc = readFileSync(new URL("../../docs/language.md", import.meta.url), "utf8");

  it("compiles without diagnostics", () => {
    const result = compileSpec(spec, { fileName: "tinydisk.med" });
    expect(result.diagnostics).toEqual([]);
    expect(result.files.map((f) => f.path)).toContain("commands.ts");
    const commands = result.files.find((f) => f.path === "commands.ts")!.content;
    expect(commands).toContain("decodeTinyCommand");
  });

  it("is the text shown in the document", () => {
    const body = spec.slice(spec.indexOf("\n\n") + 2);
    for (const chunk of body.split("\n\n").filter((c) => c.trim() !== "")) {
      expect(doc).toContain(chunk.trim());
    }
  });
});
