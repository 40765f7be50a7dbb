/**
 * The medic grammar as a chevrotain CstParser: syntax only, no semantic actions. The CST is
 * turned into a typed AST by build-ast.ts. Error recovery is on, so one run reports every
 * syntax error it can resynchronise after (see parseSpec in index.ts for the driver).
 *
 * Grammar (EBNF; NAME is an identifier or any keyword, see lexer.ts):
 *
 *   spec        := decl*
 *   decl        := deviceDecl | enumDecl | blockDecl | structDecl | linkDecl | commandsDecl | mediatorDecl
 *   deviceDecl  := 'device' NAME STRING? '{' (NAME '=' NUMBER ';')* '}'
 *   enumDecl    := 'enum' NAME STRING? '{' (NAME '=' NUMBER STRING? ';')* '}'
 *   blockDecl   := 'block' NAME ('[' NUMBER ']')? '@' NUMBER ('stride' NUMBER | 'size' NUMBER)* STRING?
 *                  '{' regDecl* '}'
 *   regDecl     := 'reg' NAME '@' NUMBER ('width' NUMBER)? (':' flag+)? ('=' NUMBER)? STRING? '{' fieldDecl* '}'
 *   flag        := 'ro' | 'rw' | 'w1c' | 'w1s' | 'wo' | 'rsvd' | 'selfclear' | 'volatile'
 *   fieldDecl   := NAME '[' NUMBER (':' NUMBER)? ']' (flag | 'enum' NAME)* ('=' NUMBER)? STRING? ';'
 *   structDecl  := 'struct' NAME ('size' NUMBER)? STRING? '{' (valueDecl | memberDecl)* '}'
 *   memberDecl  := NAME '@' NUMBER memberType ('const' (NUMBER | path))? STRING? ('{' fieldDecl* '}' | ';')
 *   memberType  := 'bytes' NUMBER | NAME ('[' (NUMBER | path) ']')?     (NAME: u8, u16, u32, u64 or a struct)
 *   valueDecl   := 'value' NAME '=' valuePart (':' valuePart)* STRING? ';'
 *   valuePart   := path ('[' NUMBER (':' NUMBER)? ']')?
 *   linkDecl    := 'link' path (':' path)? '->' linkTarget ('align' NUMBER)? STRING? ';'
 *   linkTarget  := 'data' 'length' path ('+' NUMBER)? | NAME
 *   commandsDecl:= 'commands' NAME 'on' path ('with' preset (',' preset)*)? STRING? '{' commandDecl* '}'
 *   preset      := path '=' NUMBER
 *   commandDecl := NAME '=' NUMBER NAME clause* STRING? ';'
 *   clause      := 'lba' NAME | 'count' NAME ('+' NUMBER)? ('zero' NUMBER)? | 'bytes' NUMBER
 *                | 'dma' | 'pio' | 'queued' | 'tag' NAME
 *   mediatorDecl:= 'mediator' NAME STRING? '{' mediatorItem* '}'
 *   mediatorItem:= 'trap' NAME path NAME STRING? ';'
 *                | ('slots' | 'queue' | 'error' | 'direction' | 'fis_length' | 'transferred') path ';'
 *                | 'status' path 'error' path ';' | ('start' | 'receive') path 'running' path ';'
 *                | 'commands' NAME 'in' path ';' | 'complete' 'queued'? NAME 'at' path 'raise' path ';'
 *                | 'interrupt' path '&' path '->' path 'enable' path ';'
 *   path        := NAME ('.' NAME)*
 */

import {
  CstParser,
  type IParserErrorMessageProvider,
  type IToken,
  type TokenType,
  tokenLabel,
} from "chevrotain";
import * as T from "./lexer.ts";

/** How a token is shown in a syntax error: its text, or "end of file". */
export function describeToken(token: IToken | undefined): string {
  if (token === undefined || token.tokenType.name === "EOF") return "end of file";
  let image = token.image;
  if (image.length > 24) image = `${image.slice(0, 21)}...`;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: showing control characters readably is the point
  image = image.replace(/[\u0000-\u001f\u007f]/g, "?");
  return `'${image}'`;
}

/** "a, b or c" */
export function listOr(items: readonly string[]): string {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} or ${items[items.length - 1]}`;
}

function labelsOf(paths: readonly (readonly TokenType[])[]): string[] {
  const labels: string[] = [];
  for (const path of paths) {
    const first = path[0];
    if (first === undefined) continue;
    const label = tokenLabel(first);
    if (!labels.includes(label)) labels.push(label);
  }
  return labels;
}

function junkMessage(token: IToken): string {
  return `unexpected ${describeToken(token)}: expected a declaration (device, enum, block, struct, link, commands or mediator)`;
}

const errorMessages: IParserErrorMessageProvider = {
  buildMismatchTokenMessage({ expected, actual }) {
    // Recovery at the top level reports junk between declarations as a missing end of file.
    if (expected.name === "EOF") return junkMessage(actual);
    return `expected ${tokenLabel(expected)} but found ${describeToken(actual)}`;
  },
  buildNotAllInputParsedMessage({ firstRedundant }) {
    return junkMessage(firstRedundant);
  },
  buildNoViableAltMessage({ expectedPathsPerAlt, actual, customUserDescription }) {
    const found = describeToken(actual[0]);
    if (customUserDescription) return `expected ${customUserDescription} but found ${found}`;
    const labels = labelsOf(expectedPathsPerAlt.flat());
    if (labels.length === 0 || labels.length > 8) return `unexpected ${found}`;
    return `expected ${listOr(labels)} but found ${found}`;
  },
  buildEarlyExitMessage({ expectedIterationPaths, actual, customUserDescription }) {
    const found = describeToken(actual[0]);
    if (customUserDescription) return `expected ${customUserDescription} but found ${found}`;
    const labels = labelsOf(expectedIterationPaths);
    return `expected ${listOr(labels)} but found ${found}`;
  },
};

export class MedParser extends CstParser {
  constructor() {
    super([...T.allTokens], {
      recoveryEnabled: true,
      nodeLocationTracking: "full",
      maxLookahead: 3,
      errorMessageProvider: errorMessages,
    });
    this.performSelfAnalysis();
  }

  spec = this.RULE("spec", () => {
    this.MANY(() => {
      this.OR([
        { ALT: () => this.SUBRULE(this.deviceDecl) },
        { ALT: () => this.SUBRULE(this.enumDecl) },
        { ALT: () => this.SUBRULE(this.blockDecl) },
        { ALT: () => this.SUBRULE(this.structDecl) },
        { ALT: () => this.SUBRULE(this.linkDecl) },
        { ALT: () => this.SUBRULE(this.commandsDecl) },
        { ALT: () => this.SUBRULE(this.mediatorDecl) },
      ]);
    });
  });

  name = this.RULE("name", () => {
    this.CONSUME(T.Name);
  });

  path = this.RULE("path", () => {
    this.SUBRULE(this.name);
    this.MANY(() => {
      this.CONSUME(T.Dot);
      this.SUBRULE2(this.name);
    });
  });

  doc = this.RULE("doc", () => {
    this.CONSUME(T.StringLit);
  });

  // device NAME "doc" { key = value; ... }
  deviceDecl = this.RULE("deviceDecl", () => {
    this.CONSUME(T.Device);
    this.SUBRULE(this.name);
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.deviceProp));
    this.CONSUME(T.RBrace);
  });

  deviceProp = this.RULE("deviceProp", () => {
    this.SUBRULE(this.name);
    this.CONSUME(T.Equals);
    this.CONSUME(T.NumberLit, { LABEL: "value" });
    this.CONSUME(T.Semi);
  });

  // enum NAME "doc" { MEMBER = value "doc"; ... }
  enumDecl = this.RULE("enumDecl", () => {
    this.CONSUME(T.Enum);
    this.SUBRULE(this.name);
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.enumMember));
    this.CONSUME(T.RBrace);
  });

  enumMember = this.RULE("enumMember", () => {
    this.SUBRULE(this.name);
    this.CONSUME(T.Equals);
    this.CONSUME(T.NumberLit, { LABEL: "value" });
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  // block NAME[count] @ offset stride N size N "doc" { reg ... }
  blockDecl = this.RULE("blockDecl", () => {
    this.CONSUME(T.Block);
    this.SUBRULE(this.name);
    this.OPTION(() => {
      this.CONSUME(T.LBracket);
      this.CONSUME(T.NumberLit, { LABEL: "count" });
      this.CONSUME(T.RBracket);
    });
    this.CONSUME(T.AtSign);
    this.CONSUME2(T.NumberLit, { LABEL: "offset" });
    this.MANY(() => {
      this.OR([
        {
          ALT: () => {
            this.CONSUME(T.Stride, { LABEL: "strideKw" });
            this.CONSUME3(T.NumberLit, { LABEL: "stride" });
          },
        },
        {
          ALT: () => {
            this.CONSUME(T.Size, { LABEL: "sizeKw" });
            this.CONSUME4(T.NumberLit, { LABEL: "size" });
          },
        },
      ]);
    });
    this.OPTION2(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY2(() => this.SUBRULE(this.regDecl));
    this.CONSUME(T.RBrace);
  });

  flag = this.RULE("flag", () => {
    this.OR({
      DEF: [
        { ALT: () => this.CONSUME(T.Ro) },
        { ALT: () => this.CONSUME(T.Rw) },
        { ALT: () => this.CONSUME(T.W1c) },
        { ALT: () => this.CONSUME(T.W1s) },
        { ALT: () => this.CONSUME(T.Wo) },
        { ALT: () => this.CONSUME(T.Rsvd) },
        { ALT: () => this.CONSUME(T.Selfclear) },
        { ALT: () => this.CONSUME(T.Volatile) },
      ],
      ERR_MSG: "an access kind (ro, rw, w1c, w1s, wo, rsvd), selfclear or volatile",
    });
  });

  // reg NAME @ offset width N : flags = reset "doc" { fields }
  regDecl = this.RULE("regDecl", () => {
    this.CONSUME(T.Reg);
    this.SUBRULE(this.name);
    this.CONSUME(T.AtSign);
    this.CONSUME(T.NumberLit, { LABEL: "offset" });
    this.OPTION(() => {
      this.CONSUME(T.Width);
      this.CONSUME2(T.NumberLit, { LABEL: "width" });
    });
    this.OPTION2(() => {
      this.CONSUME(T.Colon);
      this.AT_LEAST_ONE(() => this.SUBRULE(this.flag));
    });
    this.OPTION3(() => {
      this.CONSUME(T.Equals);
      this.CONSUME3(T.NumberLit, { LABEL: "reset" });
    });
    this.OPTION4(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.fieldDecl));
    this.CONSUME(T.RBrace);
  });

  // NAME [msb:lsb] flags enum E = reset "doc";
  fieldDecl = this.RULE("fieldDecl", () => {
    this.SUBRULE(this.name);
    this.CONSUME(T.LBracket);
    this.CONSUME(T.NumberLit, { LABEL: "msb" });
    this.OPTION(() => {
      this.CONSUME(T.Colon);
      this.CONSUME2(T.NumberLit, { LABEL: "lsb" });
    });
    this.CONSUME(T.RBracket);
    this.MANY(() => {
      this.OR([
        { ALT: () => this.SUBRULE(this.flag) },
        {
          ALT: () => {
            this.CONSUME(T.Enum);
            this.SUBRULE2(this.name, { LABEL: "enumName" });
          },
        },
      ]);
    });
    this.OPTION2(() => {
      this.CONSUME(T.Equals);
      this.CONSUME3(T.NumberLit, { LABEL: "reset" });
    });
    this.OPTION3(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  // struct NAME size N "doc" { members and values }
  structDecl = this.RULE("structDecl", () => {
    this.CONSUME(T.Struct);
    this.SUBRULE(this.name);
    this.OPTION(() => {
      this.CONSUME(T.Size);
      this.CONSUME(T.NumberLit, { LABEL: "size" });
    });
    this.OPTION2(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => {
      this.OR([{ ALT: () => this.SUBRULE(this.valueDecl) }, { ALT: () => this.SUBRULE(this.memberDecl) }]);
    });
    this.CONSUME(T.RBrace);
  });

  // NAME @ offset type const X "doc" ({ fields } | ;)
  memberDecl = this.RULE("memberDecl", () => {
    this.SUBRULE(this.name);
    this.CONSUME(T.AtSign);
    this.CONSUME(T.NumberLit, { LABEL: "offset" });
    this.SUBRULE(this.memberType);
    this.OPTION(() => {
      this.CONSUME(T.Const);
      this.OR([
        { ALT: () => this.CONSUME2(T.NumberLit, { LABEL: "constNumber" }) },
        { ALT: () => this.SUBRULE(this.path, { LABEL: "constPath" }) },
      ]);
    });
    this.OPTION2(() => this.SUBRULE(this.doc));
    this.OR2([
      {
        ALT: () => {
          this.CONSUME(T.LBrace);
          this.MANY(() => this.SUBRULE(this.fieldDecl));
          this.CONSUME(T.RBrace);
        },
      },
      { ALT: () => this.CONSUME(T.Semi) },
    ]);
  });

  memberType = this.RULE("memberType", () => {
    this.OR({
      DEF: [
        {
          ALT: () => {
            this.CONSUME(T.Bytes);
            this.CONSUME(T.NumberLit, { LABEL: "bytes" });
          },
        },
        {
          // u8, u16, u32, u64 or a struct name, told apart by the AST builder
          ALT: () => {
            this.SUBRULE(this.name, { LABEL: "type" });
            this.OPTION(() => {
              this.CONSUME(T.LBracket);
              this.OR2([
                { ALT: () => this.CONSUME2(T.NumberLit, { LABEL: "count" }) },
                { ALT: () => this.SUBRULE(this.path, { LABEL: "countFrom" }) },
              ]);
              this.CONSUME(T.RBracket);
            });
          },
        },
      ],
      ERR_MSG: "a member type (u8, u16, u32, u64, bytes N or a struct name)",
    });
  });

  // value NAME = part : part ... "doc";
  valueDecl = this.RULE("valueDecl", () => {
    this.CONSUME(T.Value);
    this.SUBRULE(this.name);
    this.CONSUME(T.Equals);
    this.AT_LEAST_ONE_SEP({ SEP: T.Colon, DEF: () => this.SUBRULE(this.valuePart) });
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  valuePart = this.RULE("valuePart", () => {
    this.SUBRULE(this.path);
    this.OPTION(() => {
      this.CONSUME(T.LBracket);
      this.CONSUME(T.NumberLit, { LABEL: "msb" });
      this.OPTION2(() => {
        this.CONSUME(T.Colon);
        this.CONSUME2(T.NumberLit, { LABEL: "lsb" });
      });
      this.CONSUME(T.RBracket);
    });
  });

  // link low : high -> target align N "doc";
  linkDecl = this.RULE("linkDecl", () => {
    this.CONSUME(T.Link);
    this.SUBRULE(this.path, { LABEL: "low" });
    this.OPTION(() => {
      this.CONSUME(T.Colon);
      this.SUBRULE2(this.path, { LABEL: "high" });
    });
    this.CONSUME(T.Arrow);
    this.OR({
      DEF: [
        {
          ALT: () => {
            this.CONSUME(T.Data);
            this.CONSUME(T.Length);
            this.SUBRULE3(this.path, { LABEL: "length" });
            this.OPTION2(() => {
              this.CONSUME(T.Plus);
              this.CONSUME(T.NumberLit, { LABEL: "lengthAdd" });
            });
          },
        },
        { ALT: () => this.SUBRULE(this.name, { LABEL: "target" }) },
      ],
      ERR_MSG: "a struct name or 'data length'",
    });
    this.OPTION3(() => {
      this.CONSUME(T.Align);
      this.CONSUME2(T.NumberLit, { LABEL: "align" });
    });
    this.OPTION4(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  // commands NAME on Struct.Member with preset, ... "doc" { commands }
  commandsDecl = this.RULE("commandsDecl", () => {
    this.CONSUME(T.Commands);
    this.SUBRULE(this.name);
    this.CONSUME(T.On);
    this.SUBRULE(this.path, { LABEL: "on" });
    this.OPTION(() => {
      this.CONSUME(T.With);
      this.AT_LEAST_ONE_SEP({ SEP: T.Comma, DEF: () => this.SUBRULE(this.preset) });
    });
    this.OPTION2(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.commandDecl));
    this.CONSUME(T.RBrace);
  });

  // MEMBER(.FIELD) = value
  preset = this.RULE("preset", () => {
    this.SUBRULE(this.path);
    this.CONSUME(T.Equals);
    this.CONSUME(T.NumberLit, { LABEL: "value" });
  });

  // NAME = opcode kind clauses "doc";
  commandDecl = this.RULE("commandDecl", () => {
    this.SUBRULE(this.name);
    this.CONSUME(T.Equals);
    this.CONSUME(T.NumberLit, { LABEL: "opcode" });
    this.SUBRULE2(this.name, { LABEL: "kind" });
    this.MANY(() => this.SUBRULE(this.commandClause));
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  commandClause = this.RULE("commandClause", () => {
    this.OR({
      DEF: [
        {
          ALT: () => {
            this.CONSUME(T.Lba, { LABEL: "keyword" });
            this.SUBRULE(this.name, { LABEL: "ref" });
          },
        },
        {
          ALT: () => {
            this.CONSUME(T.Count, { LABEL: "keyword" });
            this.SUBRULE2(this.name, { LABEL: "ref" });
            this.OPTION(() => {
              this.CONSUME(T.Plus);
              this.CONSUME(T.NumberLit, { LABEL: "add" });
            });
            this.OPTION2(() => {
              this.CONSUME(T.Zero);
              this.CONSUME2(T.NumberLit, { LABEL: "zero" });
            });
          },
        },
        {
          ALT: () => {
            this.CONSUME(T.Bytes, { LABEL: "keyword" });
            this.CONSUME3(T.NumberLit, { LABEL: "bytes" });
          },
        },
        { ALT: () => this.CONSUME(T.Dma, { LABEL: "keyword" }) },
        { ALT: () => this.CONSUME(T.Pio, { LABEL: "keyword" }) },
        { ALT: () => this.CONSUME(T.Queued, { LABEL: "keyword" }) },
        {
          ALT: () => {
            this.CONSUME(T.Tag, { LABEL: "keyword" });
            this.SUBRULE3(this.name, { LABEL: "ref" });
          },
        },
      ],
      ERR_MSG: "a command clause (lba, count, bytes, dma, pio, queued, tag), a string or ';'",
    });
  });

  // mediator PROTOCOL "doc" { items }
  mediatorDecl = this.RULE("mediatorDecl", () => {
    this.CONSUME(T.Mediator);
    this.SUBRULE(this.name);
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.mediatorItem));
    this.CONSUME(T.RBrace);
  });

  mediatorItem = this.RULE("mediatorItem", () => {
    this.OR({
      DEF: [
        { ALT: () => this.SUBRULE(this.trapItem) },
        { ALT: () => this.SUBRULE(this.registerItem) },
        { ALT: () => this.SUBRULE(this.statusItem) },
        { ALT: () => this.SUBRULE(this.engineItem) },
        { ALT: () => this.SUBRULE(this.commandsItem) },
        { ALT: () => this.SUBRULE(this.completeItem) },
        { ALT: () => this.SUBRULE(this.interruptItem) },
      ],
      ERR_MSG:
        "a mediator item (trap, slots, queue, commands, direction, fis_length, transferred, start, receive, complete, error, status or interrupt)",
    });
  });

  // trap read|write block.reg role "doc";
  trapItem = this.RULE("trapItem", () => {
    this.CONSUME(T.Trap);
    this.SUBRULE(this.name, { LABEL: "access" });
    this.SUBRULE(this.path, { LABEL: "target" });
    this.SUBRULE2(this.name, { LABEL: "role" });
    this.OPTION(() => this.SUBRULE(this.doc));
    this.CONSUME(T.Semi);
  });

  // slots|queue|error|direction|fis_length|transferred path;
  registerItem = this.RULE("registerItem", () => {
    this.OR([
      { ALT: () => this.CONSUME(T.Slots, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.Queue, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.ErrorKw, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.Direction, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.FisLength, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.Transferred, { LABEL: "keyword" }) },
    ]);
    this.SUBRULE(this.path, { LABEL: "target" });
    this.CONSUME(T.Semi);
  });

  // status block.reg.field error block.reg.field;
  statusItem = this.RULE("statusItem", () => {
    this.CONSUME(T.Status);
    this.SUBRULE(this.path, { LABEL: "target" });
    this.CONSUME(T.ErrorKw);
    this.SUBRULE2(this.path, { LABEL: "error" });
    this.CONSUME(T.Semi);
  });

  // start|receive block.reg.field running block.reg.field;
  engineItem = this.RULE("engineItem", () => {
    this.OR([
      { ALT: () => this.CONSUME(T.Start, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(T.Receive, { LABEL: "keyword" }) },
    ]);
    this.SUBRULE(this.path, { LABEL: "target" });
    this.CONSUME(T.Running);
    this.SUBRULE2(this.path, { LABEL: "running" });
    this.CONSUME(T.Semi);
  });

  // commands SET in Struct.Member;
  commandsItem = this.RULE("commandsItem", () => {
    this.CONSUME(T.Commands);
    this.SUBRULE(this.name, { LABEL: "set" });
    this.CONSUME(T.In);
    this.SUBRULE(this.path, { LABEL: "target" });
    this.CONSUME(T.Semi);
  });

  // complete queued? FIS at Struct.Member raise block.reg.field;
  completeItem = this.RULE("completeItem", () => {
    this.CONSUME(T.Complete);
    this.OPTION(() => this.CONSUME(T.Queued));
    this.SUBRULE(this.name, { LABEL: "fis" });
    this.CONSUME(T.At);
    this.SUBRULE(this.path, { LABEL: "target" });
    this.CONSUME(T.Raise);
    this.SUBRULE2(this.path, { LABEL: "raise" });
    this.CONSUME(T.Semi);
  });

  // interrupt status & enable -> summary enable gate;
  interruptItem = this.RULE("interruptItem", () => {
    this.CONSUME(T.Interrupt);
    this.SUBRULE(this.path, { LABEL: "status" });
    this.CONSUME(T.Amp);
    this.SUBRULE2(this.path, { LABEL: "enable" });
    this.CONSUME(T.Arrow);
    this.SUBRULE3(this.path, { LABEL: "summary" });
    this.CONSUME(T.Enable);
    this.SUBRULE4(this.path, { LABEL: "gate" });
    this.CONSUME(T.Semi);
  });
}

/** The one parser instance (grammar self-checks run once, at module load). */
export const medParser = new MedParser();
