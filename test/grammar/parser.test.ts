import { describe, expect, it } from "vitest";
import type { BlockAst, CommandSetAst, DeviceAst, StructAst } from "../../grammar/ast.ts";
import { analyzeSpec, parseSpec } from "../../grammar/index.ts";
import { medLexer } from "../../grammar/lexer.ts";

const header = "device d { vendor = 0x1234; device = 0x5678; }\n";

function tokenNames(text: string): string[] {
  return medLexer.tokenize(text).tokens.map((t) => `${t.tokenType.name}:${t.image}`);
}

function errorsOf(text: string) {
  return analyzeSpec(text, "t.med").diagnostics.filter((d) => d.severity === "error");
}

describe("lexer", () => {
  it("keeps keywords from stealing the start of identifiers", () => {
    expect(tokenNames("in interrupt index data data_in dataX reg regs w1c w1cx u8 u80")).toEqual([
      "Kw_in:in",
      "Kw_interrupt:interrupt",
      "Identifier:index",
      "Kw_data:data",
      "Kw_data_in:data_in",
      "Identifier:dataX",
      "Kw_reg:reg",
      "Identifier:regs",
      "Kw_w1c:w1c",
      "Identifier:w1cx",
      "Kw_u8:u8",
      "Identifier:u80",
    ]);
  });

  it("is case-sensitive: uppercase words are names", () => {
    expect(tokenNames("STATUS status COUNT count")).toEqual([
      "Identifier:STATUS",
      "Kw_status:status",
      "Identifier:COUNT",
      "Kw_count:count",
    ]);
  });

  it("skips both kinds of comment and keeps line numbers across them", () => {
    const { tokens } = medLexer.tokenize("a // one\n/* two\nthree */ b");
    expect(tokens.map((t) => [t.image, t.startLine, t.startColumn])).toEqual([
      ["a", 1, 1],
      ["b", 3, 10],
    ]);
  });

  it("lexes punctuation, including -> and &", () => {
    expect(tokenNames("{}[]();:=@.,->&+")).toEqual([
      "LBrace:{",
      "RBrace:}",
      "LBracket:[",
      "RBracket:]",
      "LParen:(",
      "RParen:)",
      "Semi:;",
      "Colon::",
      "Equals:=",
      "AtSign:@",
      "Dot:.",
      "Comma:,",
      "Arrow:->",
      "Amp:&",
      "Plus:+",
    ]);
  });
});

describe("numbers and strings", () => {
  it("reads decimal, hex, binary and _ separators", () => {
    const { ast, diagnostics } = parseSpec(
      "device d { a = 42; b = 0x7F; c = 0XfF; d = 1_024; e = 0xFFFF_FFFF; f = 0b1010; g = 9007199254740991; }",
      "t.med",
    );
    expect(diagnostics).toEqual([]);
    const device = ast!.declarations[0] as DeviceAst;
    expect(device.properties.map((p) => [p.key.text, p.value.value])).toEqual([
      ["a", 42],
      ["b", 0x7f],
      ["c", 0xff],
      ["d", 1024],
      ["e", 0xffffffff],
      ["f", 10],
      ["g", Number.MAX_SAFE_INTEGER],
    ]);
    expect(device.properties[3]!.value.text).toBe("1_024");
  });

  it("rejects malformed and too large numbers, with positions", () => {
    const { ast, diagnostics } = parseSpec(
      "device d {\n  a = 0x1G;\n  b = 9007199254740992;\n  c = 1__0;\n  d = 0x;\n}",
      "t.med",
    );
    expect(ast).toBeNull();
    expect(diagnostics.map((d) => [d.line, d.column, d.length, d.message])).toEqual([
      [2, 7, 4, "invalid number '0x1G'"],
      [3, 7, 16, "number 9007199254740992 is too large (the largest is 2^53 - 1)"],
      [4, 7, 4, "invalid number '1__0'"],
      [5, 7, 2, "invalid number '0x'"],
    ]);
  });

  it("decodes string escapes and reports unknown ones at the backslash", () => {
    const ok = parseSpec('enum E "a\\"b\\\\c\\n\\x41" { }', "t.med");
    expect(ok.diagnostics).toEqual([]);
    expect(ok.ast!.declarations[0]!.kind).toBe("enum");
    expect((ok.ast!.declarations[0] as { doc: { value: string } }).doc.value).toBe('a"b\\c\nA');

    const bad = parseSpec('enum E "ab\\q" { }', "t.med");
    expect(bad.ast).toBeNull();
    expect(bad.diagnostics.map((d) => [d.line, d.column, d.length])).toEqual([[1, 11, 2]]);
    expect(bad.diagnostics[0]!.message).toMatch(/unknown escape '\\q'/);
  });
});

describe("AST", () => {
  const spec = `${header}block port[4] @ 0x100 stride 0x80 size 0x40 "ports" {
  reg CMD @ 0x18 : rw volatile "command" {
    ICC [31:28] ro = 3 "interface";
    ST  [0] rw selfclear enum Mode;
  }
}
struct S size 8 {
  T @ 0 u8 const Fis.REG;
  P @ 4 u32 { A [3:0]; }
  value V = P.A : T[7:4] "v";
}
commands ata on S.T with P.A = 1, T = 2 "set" {
  R = 0x20 read lba V count T + 1 zero 256 dma queued tag V;
}
`;
  const { ast, diagnostics } = parseSpec(spec, "t.med");

  it("parses without diagnostics", () => {
    expect(diagnostics).toEqual([]);
    expect(ast!.declarations.map((d) => d.kind)).toEqual(["device", "block", "struct", "commands"]);
  });

  it("records blocks, registers and fields with their spans", () => {
    const block = ast!.declarations[1] as BlockAst;
    expect(block.name).toEqual({ text: "port", span: { line: 2, column: 7, length: 4 } });
    expect(block.count!.value).toBe(4);
    expect(block.offset.value).toBe(0x100);
    expect(block.strides.map((s) => s.value)).toEqual([0x80]);
    expect(block.sizes.map((s) => s.value)).toEqual([0x40]);
    expect(block.doc!.value).toBe("ports");
    const reg = block.registers[0]!;
    expect(reg.name.span).toEqual({ line: 3, column: 7, length: 3 });
    expect(reg.offset.span).toEqual({ line: 3, column: 13, length: 4 });
    expect(reg.flags.map((f) => f.kind)).toEqual(["rw", "volatile"]);
    const [icc, st] = reg.fields;
    expect(icc!.msb.value).toBe(31);
    expect(icc!.lsb!.value).toBe(28);
    expect(icc!.bitsSpan).toEqual({ line: 4, column: 9, length: 7 });
    expect(icc!.reset!.value).toBe(3);
    expect(st!.lsb).toBeNull();
    expect(st!.flags.map((f) => f.kind)).toEqual(["rw", "selfclear"]);
    expect(st!.enums.map((e) => e.text)).toEqual(["Mode"]);
    // a node's span runs from its first token to its last
    expect(icc!.span).toEqual({ line: 4, column: 5, length: 'ICC [31:28] ro = 3 "interface";'.length });
  });

  it("records struct members, constants and values", () => {
    const s = ast!.declarations[2] as StructAst;
    expect(s.members.map((m) => [m.name.text, m.offset.value, m.type.kind])).toEqual([
      ["T", 0, "scalar"],
      ["P", 4, "scalar"],
    ]);
    const c = s.members[0]!.constant!;
    expect(c.kind).toBe("enum");
    expect(c.kind === "enum" && c.path.parts.map((p) => p.text)).toEqual(["Fis", "REG"]);
    expect(c.span).toEqual({ line: 9, column: 18, length: 7 });
    expect(s.members[1]!.fields!.map((f) => f.name.text)).toEqual(["A"]);
    expect(s.members[0]!.fields).toBeNull();
    const v = s.values[0]!;
    expect(
      v.parts.map((p) => [
        p.path.parts.map((x) => x.text).join("."),
        p.msb?.value ?? null,
        p.lsb?.value ?? null,
      ]),
    ).toEqual([
      ["P.A", null, null],
      ["T", 7, 4],
    ]);
  });

  it("records command sets with presets and clauses", () => {
    const c = ast!.declarations[3] as CommandSetAst;
    expect(c.presets.map((p) => [p.path.parts.map((x) => x.text).join("."), p.value.value])).toEqual([
      ["P.A", 1],
      ["T", 2],
    ]);
    const r = c.commands[0]!;
    expect(r.commandKind.text).toBe("read");
    expect(r.clauses.map((k) => k.kind)).toEqual(["lba", "count", "dma", "queued", "tag"]);
    const count = r.clauses[1]!;
    expect(count.kind === "count" && [count.ref.text, count.add?.value, count.zero?.value]).toEqual([
      "T",
      1,
      256,
    ]);
  });
});

describe("keywords used as names", () => {
  it("accepts lowercase names and keyword-like words wherever a name is expected", () => {
    const text = `device ahci { vendor = 1; device = 2; class = 3; }
enum status { data = 1; read = 2; queue = 3; }
block port @ 0 size 0x10 {
  reg value @ 0 { read [0]; write [1]; count [2]; error [3]; status [5:4] enum status; }
  reg IS @ 4 { C [0]; I [1]; TYPE [2]; DATA [3]; }
}
struct commands size 8 {
  value @ 0 u8;
  count @ 1 u8;
  STATUS @ 2 u8;
  ERROR @ 3 u8;
  COUNT @ 4 u8;
  value lba = count : value;
}
commands ata on commands.value {
  READ = 0x20 read lba lba count count dma;
}
link port.value.count -> commands align 4;
`;
    const { model, diagnostics } = analyzeSpec(text, "t.med");
    expect(diagnostics).toEqual([]);
    expect(model!.enums[0]!.members.map((m) => m.name)).toEqual(["data", "read", "queue"]);
    expect(model!.blocks[0]!.registers[0]!.fields.map((f) => f.name)).toEqual([
      "read",
      "write",
      "count",
      "error",
      "status",
    ]);
    expect(model!.structs[0]!.members.map((m) => m.name)).toEqual([
      "value",
      "count",
      "STATUS",
      "ERROR",
      "COUNT",
    ]);
    expect(model!.structs[0]!.values[0]!.name).toBe("lba");
    expect(model!.commandSets[0]!.commands[0]).toMatchObject({ lba: "lba", count: { from: "count" } });
  });
});

describe("syntax errors", () => {
  it("reports three separate errors in one file", () => {
    const text = `${header}block host @ 0 size 0x100 {
  reg CAP @ 0x00 : ro {
    S64A [31] = 1
    SNCQ [30] = 1;
  }
}
struct Fis size 8 {
  TYPE @ 0 u8 "no semicolon"
  FLAGS @ 1 u8;
}
enum Speed { GEN1 = 1; GEN2 = ; }
`;
    const errors = errorsOf(text);
    expect(errors.map((d) => [d.line, d.column, d.message])).toEqual([
      [4, 18, "expected ';' after '1'"],
      [9, 29, "expected '{' or ';' after '\"no semicolon\"'"],
      [12, 31, "expected a number but found ';'"],
    ]);
  });

  it("resumes at the next declaration after junk", () => {
    const text = `${header}}}} junk
struct S size 4 { A @ 0 u32 }
`;
    const errors = errorsOf(text);
    expect(errors.map((d) => [d.line, d.column])).toEqual([
      [2, 1],
      [3, 29],
    ]);
    expect(errors[0]!.message).toBe(
      "unexpected '}': expected a declaration (device, enum, block, struct, link, commands or mediator)",
    );
  });

  it("reports an unexpected end of file after the last token", () => {
    const errors = errorsOf(`${header}block b @ 0 size 4 {\n  reg R @ 0 {`);
    expect(errors.map((d) => [d.line, d.column, d.message])).toEqual([
      [3, 14, "expected '}' but found end of file"],
    ]);
  });

  it("reports unexpected characters, unterminated strings and comments with positions", () => {
    const errors = errorsOf(`${header}enum E { A = 1 $$ ; B = 2 "open; }\n/* open`);
    expect(errors.map((d) => [d.line, d.column, d.length, d.message])).toEqual([
      [2, 16, 2, "unexpected characters '$$'"],
      [2, 26, 1, "expected ';' but found end of file"],
      [2, 27, 8, "unterminated string: missing '\"' before the end of the line"],
      [3, 1, 2, "unterminated comment: '/*' without '*/'"],
    ]);
  });

  it("counts columns the same with CRLF line endings", () => {
    const lf = `${header}struct S size 4 {\n  A @ 0 u32 \n}\n`;
    const crlf = lf.replace(/\n/g, "\r\n");
    const a = errorsOf(lf).map((d) => [d.line, d.column]);
    const b = errorsOf(crlf).map((d) => [d.line, d.column]);
    expect(a).toEqual([[3, 12]]);
    expect(b).toEqual(a);
  });

  it("does not build an AST when there are syntax errors", () => {
    expect(parseSpec("device d {", "t.med").ast).toBeNull();
    expect(parseSpec("", "t.med").ast).toEqual({ declarations: [], span: { line: 1, column: 1, length: 1 } });
  });

  it("never throws, even on pathological input", () => {
    for (const text of [
      "{".repeat(100_000),
      "\u0000\uFFFF\uD800",
      `${header}${"reg ".repeat(10_000)}`,
      "x".repeat(100_000),
    ]) {
      const result = analyzeSpec(text, "t.med");
      expect(result.model).toBeNull();
      expect(result.diagnostics.length).toBeGreaterThan(0);
      expect(result.diagnostics.every((d) => !d.message.startsWith("internal error"))).toBe(true);
    }
  });
});
