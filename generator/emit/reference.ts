import { readFileSync } from "node:fs";
import Handlebars from "handlebars";
import type { DeviceModel, FieldModel } from "../model.ts";
import { doNotEditHeader, type GeneratedFile, hex } from "./common.ts";

const template = Handlebars.compile(
  readFileSync(new URL("../templates/reference.md.hbs", import.meta.url), "utf8"),
  { noEscape: true, strict: true },
);

/** reference.md: the register and command reference, from the model through a document template. */
export function emitReference(model: DeviceModel, path: string): GeneratedFile {
  const bits = (f: FieldModel) => (f.width === 1 ? `${f.lsb}` : `${f.msb}:${f.lsb}`);
  const cell = (text: string) => text.replace(/\|/g, "\\|");
  const view = {
    header: doNotEditHeader(model.source, "<!--").replace(/\n/g, " -->\n").concat(" -->"),
    name: model.name,
    doc: model.doc,
    identity: [
      ["PCI vendor", hex(model.identity.vendor, 4)],
      ["PCI device", hex(model.identity.device, 4)],
      ["PCI class", hex(model.identity.classCode, 6)],
      ["register BAR", String(model.identity.bar)],
      ["register window", `${hex(model.identity.barSize, 4)} bytes`],
      ["sector size", String(model.identity.sectorSize)],
      ...Object.entries(model.identity.extra).map(([k, v]) => [k, hex(v, 2)]),
    ].map(([key, value]) => ({ key, value })),
    blocks: model.blocks.map((b) => ({
      name: b.name,
      doc: b.doc,
      where:
        b.count > 1
          ? `${b.count} copies at ${hex(b.offset, 3)} + n × ${hex(b.stride, 2)}, ${hex(b.size, 2)} bytes each`
          : `at ${hex(b.offset, 3)}, ${hex(b.size, 2)} bytes`,
      registers: b.registers.map((r) => ({
        name: r.name,
        offset: hex(r.offset, 2),
        reset: hex(r.reset),
        doc: cell(r.doc),
        volatile: r.volatile ? " (volatile)" : "",
        fields: r.fields.map((f) => ({
          name: f.name,
          bits: bits(f),
          access: f.access + (f.selfclear ? ", self-clearing" : ""),
          reset: hex(f.reset, 1),
          doc: cell(f.doc) + (f.enumName ? ` (${f.enumName})` : ""),
        })),
      })),
    })),
    enums: model.enums.map((e) => ({
      name: e.name,
      doc: e.doc,
      members: e.members.map((m) => ({ name: m.name, value: hex(m.value, 2), doc: cell(m.doc) })),
    })),
    structs: model.structs.map((s) => ({
      name: s.name,
      doc: s.doc,
      size: s.size,
      members: s.members.map((m) => ({
        name: m.name,
        offset: hex(m.offset, 2),
        type:
          m.kind === "scalar"
            ? m.type + (m.constant ? ` = ${hex(m.constant.value, 2)}` : "")
            : m.kind === "bytes"
              ? `${m.size} bytes`
              : m.kind === "struct"
                ? m.count > 1
                  ? `${m.struct}[${m.count}]`
                  : m.struct
                : `${m.struct}[${m.countFrom.struct}.${m.countFrom.member}${m.countFrom.field ? `.${m.countFrom.field}` : ""}]`,
        doc:
          cell(m.doc) +
          (m.kind === "scalar" && m.fields.length
            ? ` — ${m.fields.map((f) => `${f.name} [${bits(f)}]`).join(", ")}`
            : ""),
      })),
      values: s.values.map((v) => ({
        name: v.name,
        parts: v.parts.map((p) => `${p.member}[${p.msb}:${p.lsb}]`).join(" : "),
        width: v.width,
        doc: cell(v.doc),
      })),
    })),
    links: model.links.map((l) => ({
      from:
        l.from.kind === "register"
          ? `${l.from.block}.${l.from.low}${l.from.high ? `:${l.from.high}` : ""}`
          : `${l.from.struct}.${l.from.low}${l.from.high ? `:${l.from.high}` : ""}`,
      to:
        l.target.kind === "struct"
          ? l.target.struct
          : `data (${l.target.lengthFrom.struct}.${l.target.lengthFrom.member}${l.target.lengthFrom.field ? `.${l.target.lengthFrom.field}` : ""} + ${l.target.lengthAdd} bytes)`,
      align: l.align,
      doc: cell(l.doc),
    })),
    commandSets: model.commandSets.map((c) => ({
      name: c.name,
      doc: c.doc,
      on: `${c.struct}.${c.member}`,
      commands: [...c.commands]
        .sort((a, b) => a.opcode - b.opcode)
        .map((k) => ({
          name: k.name,
          opcode: hex(k.opcode, 2),
          kind: k.kind,
          lba: k.lba ?? "",
          count: k.count ? `${k.count.from} (0 = ${k.count.zeroMeans})` : k.bytes ? `${k.bytes} bytes` : "",
          transfer: k.transfer + (k.queued ? ", queued" : ""),
          tag: k.tag ?? "",
        })),
    })),
    mediator: model.mediator
      ? {
          protocol: model.mediator.protocol,
          doc: model.mediator.doc,
          traps: model.mediator.traps.map((t) => ({
            access: t.access,
            register: `${t.block}.${t.register}${t.field ? `.${t.field}` : ""}`,
            role: t.role,
            doc: cell(t.doc),
          })),
        }
      : null,
  };
  return { path, content: template(view) };
}
