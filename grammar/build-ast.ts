/**
 * CST → AST: a chevrotain CST visitor that turns the parser's untyped tree into the typed nodes of
 * ast.ts, with a SourceSpan on every node. parseNumber and decodeString do the lexical checks the
 * token patterns leave open (number syntax and range, string escapes).
 *
 * It is only run on a CST without syntax errors, so every mandatory child is present; a missing
 * one is an internal error (thrown, and turned into a diagnostic by index.ts).
 */

import type { CstElement, CstNode, IToken } from "chevrotain";
import type {
  AccessKeyword,
  BlockAst,
  CommandAst,
  CommandClauseAst,
  CommandSetAst,
  ConstAst,
  DeclarationAst,
  DeviceAst,
  DevicePropertyAst,
  EnumAst,
  EnumMemberAst,
  FieldAst,
  FlagAst,
  Ident,
  LinkAst,
  MediatorAst,
  MediatorItemAst,
  MemberAst,
  MemberTypeAst,
  NumberLit,
  PathAst,
  PresetAst,
  RegisterAst,
  ScalarTypeName,
  StringLit,
  StructAst,
  ValueAst,
  ValuePartAst,
} from "./ast.ts";
import type { SourceSpan } from "./diagnostics.ts";
import { medParser } from "./parser.ts";

type Ctx = Record<string, CstElement[] | undefined>;

export function tokenSpan(token: IToken): SourceSpan {
  return {
    line: token.startLine ?? 1,
    column: token.startColumn ?? 1,
    length: Math.max(1, token.image.length),
  };
}

function nodeSpan(node: CstNode): SourceSpan {
  const loc = node.location;
  if (!loc || !Number.isFinite(loc.startOffset))
    throw new Error(`syntax tree node '${node.name}' has no location`);
  const end = Number.isFinite(loc.endOffset) ? (loc.endOffset as number) : loc.startOffset;
  return {
    line: loc.startLine ?? 1,
    column: loc.startColumn ?? 1,
    length: Math.max(1, end - loc.startOffset + 1),
  };
}

function isToken(element: CstElement): element is IToken {
  return (element as IToken).image !== undefined;
}

function tokenOf(ctx: Ctx, key: string, index = 0): IToken | undefined {
  const element = ctx[key]?.[index];
  return element !== undefined && isToken(element) ? element : undefined;
}

function nodeOf(ctx: Ctx, key: string, index = 0): CstNode | undefined {
  const element = ctx[key]?.[index];
  return element !== undefined && !isToken(element) ? element : undefined;
}

function nodesOf(ctx: Ctx, key: string): CstNode[] {
  return (ctx[key] ?? []).filter((e): e is CstNode => !isToken(e));
}

function tokensOf(ctx: Ctx, key: string): IToken[] {
  return (ctx[key] ?? []).filter(isToken);
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`incomplete syntax tree: no ${what}`);
  return value;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** The value of a number token, or why it is not a number (`0x1G`, beyond 2^53 - 1). */
export function parseNumber(text: string): { value: number } | { error: string } {
  const ok =
    /^0[xX][0-9a-fA-F]+(?:_[0-9a-fA-F]+)*$/.test(text) ||
    /^0[bB][01]+(?:_[01]+)*$/.test(text) ||
    /^[0-9]+(?:_[0-9]+)*$/.test(text);
  if (!ok) return { error: `invalid number '${text.length > 24 ? `${text.slice(0, 21)}...` : text}'` };
  const big = BigInt(text.replace(/_/g, ""));
  if (big > MAX_SAFE)
    return {
      error: `number ${text.length > 24 ? `${text.slice(0, 21)}...` : text} is too large (the largest is 2^53 - 1)`,
    };
  return { value: Number(big) };
}

/** The text of a string token (quotes included in `image`), and its invalid escapes. */
export function decodeString(image: string): {
  value: string;
  errors: { offset: number; length: number; message: string }[];
} {
  const raw = image.slice(1, -1);
  const errors: { offset: number; length: number; message: string }[] = [];
  let value = "";
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c !== "\\") {
      value += c;
      continue;
    }
    const at = i + 1; // offset in image
    const e = raw[i + 1] ?? "";
    i++;
    const simple: Record<string, string> = {
      "\\": "\\",
      '"': '"',
      "'": "'",
      n: "\n",
      t: "\t",
      r: "\r",
      "0": "\0",
    };
    if (Object.hasOwn(simple, e)) {
      value += simple[e];
    } else if (e === "x") {
      const hex = raw.slice(i + 1, i + 3);
      if (/^[0-9a-fA-F]{2}$/.test(hex)) {
        value += String.fromCharCode(Number.parseInt(hex, 16));
        i += 2;
      } else
        errors.push({
          offset: at,
          length: 2 + hex.length,
          message: "invalid escape: \\x needs two hex digits",
        });
    } else {
      errors.push({
        offset: at,
        length: 2,
        message: `unknown escape '\\${e}' in string (use \\\\, \\", \\n, \\t, \\r, \\0 or \\xHH)`,
      });
      value += e;
    }
  }
  return { value, errors };
}

const BaseVisitor = medParser.getBaseCstVisitorConstructor();

/** One visitor method per grammar rule; `build*` helpers call them with the right node. */
class AstBuilder extends BaseVisitor {
  constructor() {
    super();
    this.validateVisitor();
  }

  // --- leaves ------------------------------------------------------------------------------

  private number(token: IToken | undefined, what: string): NumberLit {
    const t = need(token, what);
    const parsed = parseNumber(t.image);
    return { value: "value" in parsed ? parsed.value : 0, text: t.image, span: tokenSpan(t) };
  }

  private optNumber(token: IToken | undefined, what: string): NumberLit | null {
    return token === undefined ? null : this.number(token, what);
  }

  private str(node: CstNode | undefined): StringLit | null {
    if (node === undefined) return null;
    const token = need(tokenOf(node.children, "StringLit"), "string");
    return { value: decodeString(token.image).value, span: tokenSpan(token) };
  }

  private ident(node: CstNode | undefined, what: string): Ident {
    return this.visit(need(node, what)) as Ident;
  }

  private pathOf(node: CstNode | undefined, what: string): PathAst {
    return this.visit(need(node, what)) as PathAst;
  }

  private memberTypeOf(node: CstNode): MemberTypeAst {
    return this.visit(node, node) as MemberTypeAst;
  }

  private flags(nodes: CstNode[]): FlagAst[] {
    return nodes.map((n) => this.visit(n) as FlagAst);
  }

  // --- rules -------------------------------------------------------------------------------

  spec(ctx: Ctx): DeclarationAst[] {
    const declarations: { decl: DeclarationAst; offset: number }[] = [];
    for (const key of [
      "deviceDecl",
      "enumDecl",
      "blockDecl",
      "structDecl",
      "linkDecl",
      "commandsDecl",
      "mediatorDecl",
    ]) {
      for (const node of nodesOf(ctx, key)) {
        declarations.push({
          decl: this.visit(node, node) as DeclarationAst,
          offset: node.location?.startOffset ?? 0,
        });
      }
    }
    return declarations.sort((a, b) => a.offset - b.offset).map((d) => d.decl);
  }

  name(ctx: Ctx): Ident {
    const token = need(tokenOf(ctx, "Name"), "name");
    return { text: token.image, span: tokenSpan(token) };
  }

  path(ctx: Ctx): PathAst {
    const parts = nodesOf(ctx, "name").map((n) => this.visit(n) as Ident);
    const first = need(parts[0], "path");
    const last = parts[parts.length - 1]!;
    const length =
      last.span.line === first.span.line
        ? last.span.column + last.span.length - first.span.column
        : first.span.length;
    return { parts, span: { line: first.span.line, column: first.span.column, length } };
  }

  doc(): never {
    throw new Error("doc strings are read by their parent rule");
  }

  deviceDecl(ctx: Ctx, node: CstNode): DeviceAst {
    return {
      kind: "device",
      name: this.ident(nodeOf(ctx, "name"), "device name"),
      doc: this.str(nodeOf(ctx, "doc")),
      properties: nodesOf(ctx, "deviceProp").map((n) => this.visit(n, n) as DevicePropertyAst),
      span: nodeSpan(node),
    };
  }

  deviceProp(ctx: Ctx, node: CstNode): DevicePropertyAst {
    return {
      key: this.ident(nodeOf(ctx, "name"), "property name"),
      value: this.number(tokenOf(ctx, "value"), "property value"),
      span: nodeSpan(node),
    };
  }

  enumDecl(ctx: Ctx, node: CstNode): EnumAst {
    return {
      kind: "enum",
      name: this.ident(nodeOf(ctx, "name"), "enum name"),
      doc: this.str(nodeOf(ctx, "doc")),
      members: nodesOf(ctx, "enumMember").map((n) => this.visit(n, n) as EnumMemberAst),
      span: nodeSpan(node),
    };
  }

  enumMember(ctx: Ctx, node: CstNode): EnumMemberAst {
    return {
      name: this.ident(nodeOf(ctx, "name"), "enum member name"),
      value: this.number(tokenOf(ctx, "value"), "enum member value"),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  blockDecl(ctx: Ctx, node: CstNode): BlockAst {
    return {
      kind: "block",
      name: this.ident(nodeOf(ctx, "name"), "block name"),
      count: this.optNumber(tokenOf(ctx, "count"), "block count"),
      offset: this.number(tokenOf(ctx, "offset"), "block offset"),
      strides: tokensOf(ctx, "stride").map((t) => this.number(t, "stride")),
      sizes: tokensOf(ctx, "size").map((t) => this.number(t, "size")),
      doc: this.str(nodeOf(ctx, "doc")),
      registers: nodesOf(ctx, "regDecl").map((n) => this.visit(n, n) as RegisterAst),
      span: nodeSpan(node),
    };
  }

  flag(ctx: Ctx): FlagAst {
    for (const elements of Object.values(ctx)) {
      const token = elements?.[0];
      if (token !== undefined && isToken(token)) {
        return { kind: token.image as AccessKeyword | "selfclear" | "volatile", span: tokenSpan(token) };
      }
    }
    throw new Error("incomplete syntax tree: empty flag");
  }

  regDecl(ctx: Ctx, node: CstNode): RegisterAst {
    return {
      name: this.ident(nodeOf(ctx, "name"), "register name"),
      offset: this.number(tokenOf(ctx, "offset"), "register offset"),
      width: this.optNumber(tokenOf(ctx, "width"), "register width"),
      flags: this.flags(nodesOf(ctx, "flag")),
      reset: this.optNumber(tokenOf(ctx, "reset"), "register reset"),
      doc: this.str(nodeOf(ctx, "doc")),
      fields: nodesOf(ctx, "fieldDecl").map((n) => this.visit(n, n) as FieldAst),
      span: nodeSpan(node),
    };
  }

  fieldDecl(ctx: Ctx, node: CstNode): FieldAst {
    const open = need(tokenOf(ctx, "LBracket"), "'['");
    const close = need(tokenOf(ctx, "RBracket"), "']'");
    const bitsSpan: SourceSpan = {
      line: open.startLine ?? 1,
      column: open.startColumn ?? 1,
      length: Math.max(1, (close.endOffset ?? close.startOffset) - open.startOffset + 1),
    };
    return {
      name: this.ident(nodeOf(ctx, "name"), "field name"),
      msb: this.number(tokenOf(ctx, "msb"), "bit number"),
      lsb: this.optNumber(tokenOf(ctx, "lsb"), "bit number"),
      bitsSpan,
      flags: this.flags(nodesOf(ctx, "flag")),
      enums: nodesOf(ctx, "enumName").map((n) => this.visit(n) as Ident),
      reset: this.optNumber(tokenOf(ctx, "reset"), "field reset"),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  structDecl(ctx: Ctx, node: CstNode): StructAst {
    return {
      kind: "struct",
      name: this.ident(nodeOf(ctx, "name"), "struct name"),
      size: this.optNumber(tokenOf(ctx, "size"), "struct size"),
      doc: this.str(nodeOf(ctx, "doc")),
      members: nodesOf(ctx, "memberDecl").map((n) => this.visit(n, n) as MemberAst),
      values: nodesOf(ctx, "valueDecl").map((n) => this.visit(n, n) as ValueAst),
      span: nodeSpan(node),
    };
  }

  memberDecl(ctx: Ctx, node: CstNode): MemberAst {
    let constant: ConstAst | null = null;
    const constToken = tokenOf(ctx, "Kw_const");
    if (constToken !== undefined) {
      const numberToken = tokenOf(ctx, "constNumber");
      if (numberToken !== undefined) {
        const value = this.number(numberToken, "constant");
        constant = { kind: "number", value, span: value.span };
      } else {
        const path = this.pathOf(nodeOf(ctx, "constPath"), "constant");
        constant = { kind: "enum", path, span: path.span };
      }
    }
    return {
      name: this.ident(nodeOf(ctx, "name"), "member name"),
      offset: this.number(tokenOf(ctx, "offset"), "member offset"),
      type: this.memberTypeOf(need(nodeOf(ctx, "memberType"), "member type")),
      constant,
      doc: this.str(nodeOf(ctx, "doc")),
      fields: tokenOf(ctx, "LBrace")
        ? nodesOf(ctx, "fieldDecl").map((n) => this.visit(n, n) as FieldAst)
        : null,
      span: nodeSpan(node),
    };
  }

  memberType(ctx: Ctx, node: CstNode): MemberTypeAst {
    const span = nodeSpan(node);
    const bytes = tokenOf(ctx, "bytes");
    if (bytes !== undefined) return { kind: "bytes", size: this.number(bytes, "byte count"), span };
    const type = this.ident(nodeOf(ctx, "type"), "member type");
    const bracketed = tokenOf(ctx, "LBracket") !== undefined;
    if (["u8", "u16", "u32", "u64"].includes(type.text)) {
      return { kind: bracketed ? "scalarArray" : "scalar", type: type.text as ScalarTypeName, span };
    }
    const countFrom = nodeOf(ctx, "countFrom");
    if (countFrom !== undefined)
      return { kind: "tail", struct: type, countFrom: this.pathOf(countFrom, "count"), span };
    return {
      kind: "struct",
      struct: type,
      count: this.optNumber(tokenOf(ctx, "count"), "array count"),
      span,
    };
  }

  valueDecl(ctx: Ctx, node: CstNode): ValueAst {
    return {
      name: this.ident(nodeOf(ctx, "name"), "value name"),
      parts: nodesOf(ctx, "valuePart").map((n) => this.visit(n, n) as ValuePartAst),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  valuePart(ctx: Ctx, node: CstNode): ValuePartAst {
    return {
      path: this.pathOf(nodeOf(ctx, "path"), "value part"),
      msb: this.optNumber(tokenOf(ctx, "msb"), "bit number"),
      lsb: this.optNumber(tokenOf(ctx, "lsb"), "bit number"),
      span: nodeSpan(node),
    };
  }

  linkDecl(ctx: Ctx, node: CstNode): LinkAst {
    let target: LinkAst["target"];
    const lengthNode = nodeOf(ctx, "length");
    if (lengthNode !== undefined) {
      const data = need(tokenOf(ctx, "Kw_data"), "'data'");
      const length = this.pathOf(lengthNode, "length");
      const add = this.optNumber(tokenOf(ctx, "lengthAdd"), "length addend");
      const end = add ?? length;
      target = {
        kind: "data",
        length,
        add,
        span: {
          ...tokenSpan(data),
          length:
            end.span.line === data.startLine
              ? end.span.column + end.span.length - (data.startColumn ?? 1)
              : 4,
        },
      };
    } else {
      const struct = this.ident(nodeOf(ctx, "target"), "link target");
      target = { kind: "struct", struct, span: struct.span };
    }
    const highNode = nodeOf(ctx, "high");
    return {
      kind: "link",
      low: this.pathOf(nodeOf(ctx, "low"), "link source"),
      high: highNode ? this.pathOf(highNode, "link source") : null,
      target,
      align: this.optNumber(tokenOf(ctx, "align"), "alignment"),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  commandsDecl(ctx: Ctx, node: CstNode): CommandSetAst {
    return {
      kind: "commands",
      name: this.ident(nodeOf(ctx, "name"), "command set name"),
      on: this.pathOf(nodeOf(ctx, "on"), "opcode member"),
      presets: nodesOf(ctx, "preset").map((n) => this.visit(n, n) as PresetAst),
      doc: this.str(nodeOf(ctx, "doc")),
      commands: nodesOf(ctx, "commandDecl").map((n) => this.visit(n, n) as CommandAst),
      span: nodeSpan(node),
    };
  }

  preset(ctx: Ctx, node: CstNode): PresetAst {
    return {
      path: this.pathOf(nodeOf(ctx, "path"), "preset"),
      value: this.number(tokenOf(ctx, "value"), "preset value"),
      span: nodeSpan(node),
    };
  }

  commandDecl(ctx: Ctx, node: CstNode): CommandAst {
    return {
      name: this.ident(nodeOf(ctx, "name"), "command name"),
      opcode: this.number(tokenOf(ctx, "opcode"), "opcode"),
      commandKind: this.ident(nodeOf(ctx, "kind"), "command kind"),
      clauses: nodesOf(ctx, "commandClause").map((n) => this.visit(n, n) as CommandClauseAst),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  commandClause(ctx: Ctx, node: CstNode): CommandClauseAst {
    const keyword = need(tokenOf(ctx, "keyword"), "clause keyword");
    const span = nodeSpan(node);
    const ref = () => this.ident(nodeOf(ctx, "ref"), "clause name");
    switch (keyword.image) {
      case "lba":
        return { kind: "lba", ref: ref(), span };
      case "tag":
        return { kind: "tag", ref: ref(), span };
      case "count":
        return {
          kind: "count",
          ref: ref(),
          add: this.optNumber(tokenOf(ctx, "add"), "count addend"),
          zero: this.optNumber(tokenOf(ctx, "zero"), "zero count"),
          span,
        };
      case "bytes":
        return { kind: "bytes", bytes: this.number(tokenOf(ctx, "bytes"), "byte count"), span };
      case "dma":
      case "pio":
      case "queued":
        return { kind: keyword.image, span };
      default:
        throw new Error(`unknown command clause '${keyword.image}'`);
    }
  }

  mediatorDecl(ctx: Ctx, node: CstNode): MediatorAst {
    return {
      kind: "mediator",
      protocol: this.ident(nodeOf(ctx, "name"), "mediator protocol"),
      doc: this.str(nodeOf(ctx, "doc")),
      items: nodesOf(ctx, "mediatorItem").map((n) => this.visit(n) as MediatorItemAst),
      span: nodeSpan(node),
    };
  }

  mediatorItem(ctx: Ctx): MediatorItemAst {
    for (const key of [
      "trapItem",
      "registerItem",
      "statusItem",
      "engineItem",
      "commandsItem",
      "completeItem",
      "interruptItem",
    ]) {
      const child = nodeOf(ctx, key);
      if (child !== undefined) return this.visit(child, child) as MediatorItemAst;
    }
    throw new Error("incomplete syntax tree: empty mediator item");
  }

  trapItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    return {
      kind: "trap",
      access: this.ident(nodeOf(ctx, "access"), "trap access"),
      target: this.pathOf(nodeOf(ctx, "target"), "trap register"),
      role: this.ident(nodeOf(ctx, "role"), "trap role"),
      doc: this.str(nodeOf(ctx, "doc")),
      span: nodeSpan(node),
    };
  }

  registerItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    const keyword = need(tokenOf(ctx, "keyword"), "item keyword");
    return {
      kind: keyword.image as "slots" | "queue" | "error" | "direction" | "fis_length" | "transferred",
      target: this.pathOf(nodeOf(ctx, "target"), keyword.image),
      span: nodeSpan(node),
    };
  }

  statusItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    return {
      kind: "status",
      target: this.pathOf(nodeOf(ctx, "target"), "status field"),
      error: this.pathOf(nodeOf(ctx, "error"), "error field"),
      span: nodeSpan(node),
    };
  }

  engineItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    const keyword = need(tokenOf(ctx, "keyword"), "item keyword");
    return {
      kind: keyword.image as "start" | "receive",
      target: this.pathOf(nodeOf(ctx, "target"), keyword.image),
      running: this.pathOf(nodeOf(ctx, "running"), "running field"),
      span: nodeSpan(node),
    };
  }

  commandsItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    return {
      kind: "commands",
      set: this.ident(nodeOf(ctx, "set"), "command set"),
      target: this.pathOf(nodeOf(ctx, "target"), "command member"),
      span: nodeSpan(node),
    };
  }

  completeItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    return {
      kind: "complete",
      queued: tokenOf(ctx, "Kw_queued") !== undefined,
      fis: this.ident(nodeOf(ctx, "fis"), "completion structure"),
      target: this.pathOf(nodeOf(ctx, "target"), "completion member"),
      raise: this.pathOf(nodeOf(ctx, "raise"), "interrupt field"),
      span: nodeSpan(node),
    };
  }

  interruptItem(ctx: Ctx, node: CstNode): MediatorItemAst {
    return {
      kind: "interrupt",
      status: this.pathOf(nodeOf(ctx, "status"), "interrupt status"),
      enable: this.pathOf(nodeOf(ctx, "enable"), "interrupt enable"),
      summary: this.pathOf(nodeOf(ctx, "summary"), "interrupt summary"),
      gate: this.pathOf(nodeOf(ctx, "gate"), "interrupt gate"),
      span: nodeSpan(node),
    };
  }
}

/**
 * Builds the AST of a CST the parser produced without errors. Number and string tokens are
 * expected to be valid (index.ts checks them with parseNumber and decodeString beforehand).
 */
export function buildAst(cst: CstNode): DeclarationAst[] {
  return new AstBuilder().visit(cst, cst) as DeclarationAst[];
}
