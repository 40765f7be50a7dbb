/**
 * The front end's entry points: text → AST (parseSpec) and text → checked model (analyzeSpec).
 * Neither throws, whatever the input: lexical, syntax and semantic problems are diagnostics, and
 * an unexpected internal failure becomes an "internal error" diagnostic too.
 */

import type { CstNode, ILexingError, IRecognitionException, IToken } from "chevrotain";
import type { DeviceModel } from "../generator/model.ts";
import type { DeclarationAst, SpecAst } from "./ast.ts";
import { buildAst, decodeString, parseNumber, tokenSpan } from "./build-ast.ts";
import { checkSpec } from "./check.ts";
import type { Diagnostic, SourceSpan } from "./diagnostics.ts";
import { hasErrors } from "./diagnostics.ts";
import {
  declarationKeywords,
  medLexer,
  NumberLit,
  RBrace,
  Semi,
  StringLit,
  UnterminatedComment,
} from "./lexer.ts";
import { describeToken, medParser } from "./parser.ts";

export type { SpecAst } from "./ast.ts";
export { checkSpec } from "./check.ts";
export type { Diagnostic, SourceSpan } from "./diagnostics.ts";
export { formatDiagnostics, hasErrors } from "./diagnostics.ts";

/** Syntax errors reported per file before giving up (binary input would give thousands). */
export const MAX_SYNTAX_ERRORS = 50;
/** Diagnostics of all kinds reported per file. */
export const MAX_DIAGNOSTICS = 200;

export interface ParseResult {
  /** The AST, or null when the text has lexical or syntax errors. */
  readonly ast: SpecAst | null;
  readonly diagnostics: Diagnostic[];
}

export interface AnalyzeResult {
  /** The checked model, or null when any error was found. */
  readonly model: DeviceModel | null;
  readonly diagnostics: Diagnostic[];
}

/** Lexes and parses a spec. Never throws. */
export function parseSpec(text: string, fileName: string): ParseResult {
  try {
    return parseUnsafe(String(text), fileName);
  } catch (e) {
    return { ast: null, diagnostics: [internalError(fileName, e)] };
  }
}

/** Parses and checks a spec: the whole front end. Never throws. */
export function analyzeSpec(text: string, fileName: string): AnalyzeResult {
  try {
    const parsed = parseUnsafe(String(text), fileName);
    if (parsed.ast === null) return { model: null, diagnostics: parsed.diagnostics };
    const checked = checkSpec(parsed.ast, fileName);
    const diagnostics = capped(
      sortDiagnostics([...parsed.diagnostics, ...checked.diagnostics]),
      MAX_DIAGNOSTICS,
    );
    return { model: hasErrors(diagnostics) ? null : checked.model, diagnostics };
  } catch (e) {
    return { model: null, diagnostics: [internalError(fileName, e)] };
  }
}

export function sortDiagnostics(diagnostics: readonly Diagnostic[]): Diagnostic[] {
  return diagnostics
    .map((d, i) => ({ d, i }))
    .sort((a, b) => a.d.line - b.d.line || a.d.column - b.d.column || a.i - b.i)
    .map(({ d }) => d);
}

/** The first `max` diagnostics, and a note where the rest would start. */
function capped(diagnostics: Diagnostic[], max: number): Diagnostic[] {
  if (diagnostics.length <= max) return diagnostics;
  const next = diagnostics[max]!;
  return [
    ...diagnostics.slice(0, max),
    { ...next, severity: "error", message: `too many problems (more than ${max}); stopping here` },
  ];
}

function internalError(file: string, e: unknown): Diagnostic {
  const message = e instanceof Error ? e.message : String(e);
  return { file, line: 1, column: 1, length: 1, severity: "error", message: `internal error: ${message}` };
}

function parseUnsafe(text: string, fileName: string): ParseResult {
  const diagnostics: Diagnostic[] = [];
  const error = (span: SourceSpan, message: string) =>
    diagnostics.push({ file: fileName, ...span, severity: "error", message });

  // --- lexing ----------------------------------------------------------------------------------
  const lexed = medLexer.tokenize(text);
  for (const e of lexed.errors) error(lexErrorSpan(e), unexpectedCharacters(text.substr(e.offset, e.length)));
  for (const t of lexed.groups.invalid ?? []) {
    if (t.tokenType === UnterminatedComment)
      error({ ...tokenSpan(t), length: 2 }, "unterminated comment: '/*' without '*/'");
    else error(tokenSpan(t), "unterminated string: missing '\"' before the end of the line");
  }
  const tokens = lexed.tokens;
  for (const t of tokens) {
    if (t.tokenType === NumberLit) {
      const parsed = parseNumber(t.image);
      if ("error" in parsed) error(tokenSpan(t), parsed.error);
    } else if (t.tokenType === StringLit) {
      const span = tokenSpan(t);
      for (const e of decodeString(t.image).errors) {
        error({ line: span.line, column: span.column + e.offset, length: e.length }, e.message);
      }
    }
  }

  // --- parsing, resuming at the next declaration after junk the parser cannot recover from ----
  const csts: CstNode[] = [];
  const seen = new Set<string>();
  let start = 0;
  for (;;) {
    const slice = tokens.slice(start);
    medParser.input = slice;
    const cst = medParser.spec();
    csts.push(cst);
    let stoppedAt = -1;
    let lastLine = -1;
    for (const e of medParser.errors) {
      const { span, message } = syntaxError(e, tokens);
      const key = `${span.line}:${span.column}:${message}`;
      // Recovery often trips again on the rest of a broken line: one error per line is enough.
      if (!seen.has(key) && span.line !== lastLine) {
        seen.add(key);
        error(span, message);
      }
      lastLine = span.line;
      if (e.name === "NotAllInputParsedException") stoppedAt = slice.indexOf(e.token);
    }
    if (stoppedAt < 0 || diagnostics.length >= MAX_SYNTAX_ERRORS) break;
    let next = stoppedAt + 1;
    while (next < slice.length && !isResumePoint(slice, next)) next++;
    if (next >= slice.length) break;
    start += next;
  }

  const sorted = capped(sortDiagnostics(diagnostics), MAX_SYNTAX_ERRORS);
  if (hasErrors(sorted)) return { ast: null, diagnostics: sorted };

  // --- AST ---------------------------------------------------------------------------------------
  const declarations: DeclarationAst[] = csts.flatMap((cst) => buildAst(cst));
  const firstLine = text.split("\n")[0] ?? "";
  const span: SourceSpan = { line: 1, column: 1, length: Math.max(1, firstLine.length) };
  return { ast: { declarations, span }, diagnostics: sorted };
}

/** A declaration keyword at the start of a line or right after a `;` or `}`. */
function isResumePoint(tokens: readonly IToken[], i: number): boolean {
  const token = tokens[i]!;
  if (!declarationKeywords.includes(token.tokenType)) return false;
  const previous = tokens[i - 1];
  if (previous === undefined) return true;
  return (
    previous.tokenType === Semi ||
    previous.tokenType === RBrace ||
    (previous.endLine ?? 0) < (token.startLine ?? 0)
  );
}

function lexErrorSpan(e: ILexingError): SourceSpan {
  return { line: e.line ?? 1, column: e.column ?? 1, length: Math.max(1, e.length) };
}

function unexpectedCharacters(chars: string): string {
  const shown = [...chars.slice(0, 16)]
    .map((c) => {
      const code = c.codePointAt(0)!;
      if (code < 0x20 || code === 0x7f) return `\\x${code.toString(16).padStart(2, "0")}`;
      if (code === 0xfffd) return "\\uFFFD";
      return c;
    })
    .join("");
  const more = chars.length > 16 ? "..." : "";
  return chars.length === 1 ? `unexpected character '${shown}'` : `unexpected characters '${shown}${more}'`;
}

function isEof(token: IToken | undefined): boolean {
  return token === undefined || token.tokenType?.name === "EOF" || !Number.isFinite(token.startOffset);
}

/** Where a syntax error is reported, and its message (see the message provider in parser.ts). */
function syntaxError(
  e: IRecognitionException,
  tokens: readonly IToken[],
): { span: SourceSpan; message: string } {
  const token = e.token;
  const index = isEof(token) ? tokens.length : tokens.indexOf(token);
  const previous = index > 0 ? tokens[index - 1] : undefined;
  const after = (t: IToken): SourceSpan => ({
    line: t.endLine ?? 1,
    column: (t.endColumn ?? 0) + 1,
    length: 1,
  });
  if (isEof(token)) {
    return { span: previous ? after(previous) : { line: 1, column: 1, length: 1 }, message: e.message };
  }
  // Something missing at the end of a line (typically ';') is reported right after the line's
  // last token, not at the start of the next line.
  if (
    /^expected .* but found /.test(e.message) &&
    previous !== undefined &&
    (previous.endLine ?? 0) < (token.startLine ?? 0)
  ) {
    return {
      span: after(previous),
      message: e.message.replace(/ but found .*$/, ` after ${describeToken(previous)}`),
    };
  }
  return { span: tokenSpan(token), message: e.message };
}
