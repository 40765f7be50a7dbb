/**
 * Tokens of the medic language (chevrotain).
 *
 * Keywords are lowercase and case-sensitive. Every keyword also belongs to the `Name` category, so
 * the parser accepts it wherever a name is expected (a register `IS`, a struct member `value`, the
 * mediator protocol `slots`, a device property `device`): a word is a keyword only where the
 * grammar asks for that keyword. `longer_alt: Identifier` keeps keywords from stealing the start
 * of longer identifiers (`reg` in `regs`, `in` in `index`).
 */

import { createToken, Lexer, type TokenType } from "chevrotain";

/** Category of every token usable as a name: identifiers and all keywords. */
export const Name = createToken({ name: "Name", pattern: Lexer.NA, label: "a name" });

export const Identifier = createToken({
  name: "Identifier",
  pattern: /[A-Za-z_][A-Za-z0-9_]*/,
  categories: [Name],
  label: "a name",
});

const keywordTokens: TokenType[] = [];

function keyword(word: string): TokenType {
  const token = createToken({
    name: `Kw_${word}`,
    pattern: new RegExp(word),
    longer_alt: Identifier,
    categories: [Name],
    label: `'${word}'`,
  });
  keywordTokens.push(token);
  return token;
}

// Declarations
export const Device = keyword("device");
export const Enum = keyword("enum");
export const Block = keyword("block");
export const Reg = keyword("reg");
export const Struct = keyword("struct");
export const Link = keyword("link");
export const Commands = keyword("commands");
export const Mediator = keyword("mediator");
export const Value = keyword("value");
// Clauses
export const On = keyword("on");
export const In = keyword("in");
export const At = keyword("at");
export const Raise = keyword("raise");
export const Enable = keyword("enable");
export const Const = keyword("const");
export const Data = keyword("data");
export const Length = keyword("length");
export const Align = keyword("align");
export const Size = keyword("size");
export const Stride = keyword("stride");
export const Width = keyword("width");
// Access kinds and register/field flags
export const Ro = keyword("ro");
export const Rw = keyword("rw");
export const W1c = keyword("w1c");
export const W1s = keyword("w1s");
export const Wo = keyword("wo");
export const Rsvd = keyword("rsvd");
export const Selfclear = keyword("selfclear");
export const Volatile = keyword("volatile");
// Member types
export const U8 = keyword("u8");
export const U16 = keyword("u16");
export const U32 = keyword("u32");
export const U64 = keyword("u64");
export const Bytes = keyword("bytes");
// Command kinds (parsed as names and validated by the checker) and command clauses
export const Read = keyword("read");
export const Write = keyword("write");
export const Flush = keyword("flush");
export const DataIn = keyword("data_in");
export const Nondata = keyword("nondata");
export const Trim = keyword("trim");
export const Dma = keyword("dma");
export const Pio = keyword("pio");
export const Queued = keyword("queued");
export const Tag = keyword("tag");
export const Lba = keyword("lba");
export const Count = keyword("count");
export const Zero = keyword("zero");
// Mediator items
export const Trap = keyword("trap");
export const Slots = keyword("slots");
export const Queue = keyword("queue");
export const Complete = keyword("complete");
export const ErrorKw = keyword("error");
export const Status = keyword("status");
export const Interrupt = keyword("interrupt");
export const With = keyword("with");
export const Direction = keyword("direction");
export const FisLength = keyword("fis_length");
export const Transferred = keyword("transferred");
export const Start = keyword("start");
export const Receive = keyword("receive");
export const Running = keyword("running");

/** All keywords, in the order the lexer tries them (longest first, so `interrupt` before `in`). */
export const keywords: readonly TokenType[] = [...keywordTokens].sort(
  (a, b) => (b.PATTERN as RegExp).source.length - (a.PATTERN as RegExp).source.length,
);

/**
 * Decimal, 0x hexadecimal or 0b binary, with `_` separators. The pattern also takes letters
 * glued to the digits (`0x1G`, `12ab`) so that the AST builder reports them as one invalid
 * number rather than a number followed by a name.
 */
export const NumberLit = createToken({
  name: "NumberLit",
  pattern: /[0-9][A-Za-z0-9_]*/,
  label: "a number",
});

export const StringLit = createToken({
  name: "StringLit",
  pattern: /"(?:[^"\\\r\n]|\\[^\r\n])*"/,
  label: "a string",
});

/** A string without its closing quote on the same line; reported by the lexer driver. */
export const UnterminatedString = createToken({
  name: "UnterminatedString",
  pattern: /"(?:[^"\\\r\n]|\\[^\r\n])*\\?/,
  group: "invalid",
});

export const LineComment = createToken({
  name: "LineComment",
  pattern: /\/\/[^\n]*/,
  group: Lexer.SKIPPED,
});

export const BlockComment = createToken({
  name: "BlockComment",
  pattern: /\/\*[\s\S]*?\*\//,
  line_breaks: true,
  group: Lexer.SKIPPED,
});

/** `/*` never closed: swallows the rest of the file; reported by the lexer driver. */
export const UnterminatedComment = createToken({
  name: "UnterminatedComment",
  pattern: /\/\*[\s\S]*/,
  line_breaks: true,
  group: "invalid",
});

export const WhiteSpace = createToken({
  name: "WhiteSpace",
  pattern: /[ \t\r\n\f\v\uFEFF]+/,
  line_breaks: true,
  group: Lexer.SKIPPED,
});

export const LBrace = createToken({ name: "LBrace", pattern: /\{/, label: "'{'" });
export const RBrace = createToken({ name: "RBrace", pattern: /\}/, label: "'}'" });
export const LBracket = createToken({ name: "LBracket", pattern: /\[/, label: "'['" });
export const RBracket = createToken({ name: "RBracket", pattern: /\]/, label: "']'" });
export const LParen = createToken({ name: "LParen", pattern: /\(/, label: "'('" });
export const RParen = createToken({ name: "RParen", pattern: /\)/, label: "')'" });
export const Semi = createToken({ name: "Semi", pattern: /;/, label: "';'" });
export const Colon = createToken({ name: "Colon", pattern: /:/, label: "':'" });
export const Equals = createToken({ name: "Equals", pattern: /=/, label: "'='" });
export const AtSign = createToken({ name: "AtSign", pattern: /@/, label: "'@'" });
export const Dot = createToken({ name: "Dot", pattern: /\./, label: "'.'" });
export const Comma = createToken({ name: "Comma", pattern: /,/, label: "','" });
export const Arrow = createToken({ name: "Arrow", pattern: /->/, label: "'->'" });
export const Amp = createToken({ name: "Amp", pattern: /&/, label: "'&'" });
export const Plus = createToken({ name: "Plus", pattern: /\+/, label: "'+'" });

/** Every token type, in lexing priority order (the parser's vocabulary). */
export const allTokens: readonly TokenType[] = [
  WhiteSpace,
  LineComment,
  BlockComment,
  UnterminatedComment,
  StringLit,
  UnterminatedString,
  NumberLit,
  ...keywords,
  Identifier,
  Name,
  LBrace,
  RBrace,
  LBracket,
  RBracket,
  LParen,
  RParen,
  Semi,
  Colon,
  Equals,
  AtSign,
  Dot,
  Comma,
  Arrow,
  Amp,
  Plus,
];

/** Top-level declaration keywords: where the parser resumes after junk between declarations. */
export const declarationKeywords: readonly TokenType[] = [
  Device,
  Enum,
  Block,
  Struct,
  Link,
  Commands,
  Mediator,
];

export const medLexer = new Lexer([...allTokens], {
  positionTracking: "full",
  // Lines end at "\n" only ("\r\n" too, its "\r" is just part of the line), exactly as
  // formatDiagnostics splits lines, so columns and carets agree for every input.
  lineTerminatorsPattern: /\n/g,
  lineTerminatorCharacters: ["\n"],
  ensureOptimizations: false,
});
