import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import type { DeviceModel, MemberModel, RegisterModel } from "../../generator/model.ts";
import { analyzeSpec, parseSpec } from "../../grammar/index.ts";

const specPath = new URL("../../spec/ahci.med", import.meta.url);
const text = readFileSync(specPath, "utf8");
const { model, diagnostics } = analyzeSpec(text, "spec/ahci.med");

function m(): DeviceModel {
  if (model === null) throw new Error("spec/ahci.med did not check");
  return model;
}

function reg(block: string, name: string): RegisterModel {
  const r = m()
    .blocks.find((b) => b.name === block)
    ?.registers.find((x) => x.name === name);
  if (!r) throw new Error(`no register ${block}.${name}`);
  return r;
}

function member(struct: string, name: string): MemberModel {
  const x = m()
    .structs.find((s) => s.name === struct)
    ?.members.find((y) => y.name === name);
  if (!x) throw new Error(`no member ${struct}.${name}`);
  return x;
}

describe("spec/ahci.med", () => {
  it("checks without any diagnostic", () => {
    expect(diagnostics).toEqual([]);
    expect(model).not.toBeNull();
  });

  it("has the device identity", () => {
    expect(m().name).toBe("ahci");
    expect(m().source).toBe("spec/ahci.med");
    expect(m().identity).toMatchObject({
      vendor: 0x8086,
      device: 0x2922,
      classCode: 0x010601,
      bar: 5,
      barSize: 0x1100,
      sectorSize: 512,
    });
  });

  it("repeats the port block 32 times at 0x100, stride 0x80", () => {
    const port = m().blocks.find((b) => b.name === "port")!;
    expect([port.count, port.offset, port.stride, port.size]).toEqual([32, 0x100, 0x80, 0x80]);
    const host = m().blocks.find((b) => b.name === "host")!;
    expect([host.count, host.offset, host.stride, host.size]).toEqual([1, 0, 0x100, 0x100]);
  });

  it("assembles CAP's reset value from its field resets", () => {
    // S64A[31]=1, SNCQ[30]=1, SSS[27]=1, SCLO[24]=1, ISS[23:20]=3, SAM[18]=1, PMD[15]=1, NCS[12:8]=31
    const expected =
      0x8000_0000 + 0x4000_0000 + 0x0800_0000 + 0x0100_0000 + (3 << 20) + (1 << 18) + (1 << 15) + (31 << 8);
    expect(expected).toBe(0xc9349f00);
    const cap = reg("host", "CAP");
    expect(cap.reset).toBe(expected);
    // every CAP field is read-only (the register's default), bit 19 is in no field
    expect(cap.fields.every((f) => f.access === "ro")).toBe(true);
    expect(cap.masks.ro).toBe(0xfff7ffff);
    expect(cap.masks.reserved).toBe(0x00080000);
    expect(cap.fields.find((f) => f.name === "NCS")).toMatchObject({
      msb: 12,
      lsb: 8,
      width: 5,
      mask: 0x1f00,
      reset: 31,
    });
  });

  it("computes PxIS's access masks: w1c by default, RO for PRCS, PCS, UFS", () => {
    const is = reg("port", "IS");
    // CPDS..IFS 31:26, OFS 24, IPMS 23, DMPS 7, DPS 5, SDBS 3, DSS 2, PSS 1, DHRS 0
    expect(is.masks.w1c).toBe(0xfd8000af);
    expect(is.masks.ro).toBe((1 << 22) | (1 << 6) | (1 << 4));
    expect(is.masks.reserved).toBe(0x023fff00);
    expect(is.volatile).toBe(true);
    expect(reg("port", "CI").masks.w1s).toBe(0xffffffff);
  });

  it("marks GHC.HR and PxCMD.CLO selfclear", () => {
    const ghc = reg("host", "GHC");
    expect(ghc.fields.find((f) => f.name === "HR")).toMatchObject({ selfclear: true, access: "rw", mask: 1 });
    expect(ghc.masks.selfclear).toBe(1);
    expect(ghc.masks.rw).toBe(0x3);
    expect(ghc.masks.ro).toBe(0x80000004); // AE reads 1 (CAP.SAM) and MRSM
    expect(reg("port", "CMD").masks.selfclear).toBe(1 << 3);
  });

  it("has the task file and signature reset values", () => {
    expect(reg("port", "TFD").reset).toBe(0x7f);
    expect(reg("port", "SIG").reset).toBe(0xffffffff);
    expect(reg("port", "CMD").reset).toBe(0x2); // SUD = 1
    expect(reg("host", "VS").reset).toBe(0x00010301);
  });

  it("resolves enums on fields", () => {
    const ssts = reg("port", "SSTS");
    expect(ssts.fields.map((f) => [f.name, f.enumName])).toEqual([
      ["IPM", "PowerState"],
      ["SPD", "InterfaceSpeed"],
      ["DET", "DeviceDetection"],
    ]);
  });

  it("derives link masks and alignments from the pointer fields", () => {
    const links = m().links.map((l) => [l.from.low, l.align, l.lowMask]);
    expect(links).toEqual([
      ["CLB", 1024, 0xfffffc00],
      ["FB", 256, 0xffffff00],
      ["CTBA", 128, 0xffffff80],
      ["DBA", 2, 0xfffffffe],
    ]);
    expect(m().links[0]!.from).toEqual({ kind: "register", block: "port", low: "CLB", high: "CLBU" });
    expect(m().links[2]!.from).toEqual({
      kind: "struct",
      struct: "CommandHeader",
      low: "CTBA",
      high: "CTBAU",
    });
    expect(m().links[3]!.target).toEqual({
      kind: "data",
      lengthFrom: { struct: "PrdEntry", member: "DW3", field: "DBC" },
      lengthAdd: 1,
    });
  });

  it("assembles the LBA values from their parts, most significant first", () => {
    const h2d = m().structs.find((s) => s.name === "RegH2DFis")!;
    const lba48 = h2d.values.find((v) => v.name === "LBA48")!;
    expect(lba48.width).toBe(48);
    expect(lba48.parts.map((p) => [p.member, p.msb, p.lsb])).toEqual([
      ["LBA5", 7, 0],
      ["LBA4", 7, 0],
      ["LBA3", 7, 0],
      ["LBA2", 7, 0],
      ["LBA1", 7, 0],
      ["LBA0", 7, 0],
    ]);
    const lba28 = h2d.values.find((v) => v.name === "LBA28")!;
    expect(lba28.width).toBe(28);
    expect(lba28.parts[0]).toEqual({ member: "DEVICE", msb: 3, lsb: 0, width: 4 });
    expect(h2d.values.find((v) => v.name === "NCQ_TAG")!.parts).toEqual([
      { member: "COUNT", msb: 7, lsb: 3, width: 5 },
    ]);
  });

  it("keeps the FIS type constants with their enum member", () => {
    expect(member("RegH2DFis", "TYPE")).toMatchObject({
      kind: "scalar",
      type: "u8",
      offset: 0,
      constant: { value: 0x27, enumName: "FisType", member: "REG_H2D" },
    });
    expect(member("SetDeviceBitsFis", "TYPE")).toMatchObject({ constant: { value: 0xa1 } });
  });

  it("decodes the NCQ commands' count and tag", () => {
    const ata = m().commandSets.find((c) => c.name === "ata")!;
    expect([ata.struct, ata.member]).toEqual(["RegH2DFis", "COMMAND"]);
    expect(ata.presets).toEqual([
      { member: "FLAGS", field: "C", value: 1 },
      { member: "DEVICE", field: "LBA_MODE", value: 1 },
    ]);
    expect(ata.commands.find((c) => c.name === "READ_FPDMA_QUEUED")).toMatchObject({
      opcode: 0x60,
      kind: "read",
      lba: "LBA48",
      count: { from: "FEATURES16", zeroMeans: 65536, add: 0 },
      transfer: "dma",
      queued: true,
      tag: "NCQ_TAG",
    });
    expect(ata.commands.find((c) => c.name === "IDENTIFY_DEVICE")).toMatchObject({
      kind: "data_in",
      bytes: 512,
      transfer: "pio",
      count: null,
      queued: false,
    });
    expect(ata.commands.find((c) => c.name === "READ_SECTORS")!.count).toEqual({
      from: "COUNT",
      zeroMeans: 256,
      add: 0,
    });
  });

  it("lays out the command structures", () => {
    expect(member("CommandTable", "PRDT")).toMatchObject({
      kind: "tail",
      struct: "PrdEntry",
      offset: 0x80,
      countFrom: { struct: "CommandHeader", member: "DW0", field: "PRDTL" },
    });
    expect(m().structs.find((s) => s.name === "CommandTable")!.size).toBe(0x80);
    expect(member("CommandList", "SLOT")).toMatchObject({
      kind: "struct",
      struct: "CommandHeader",
      count: 32,
      size: 1024,
    });
    expect(member("ReceivedFis", "RFIS")).toMatchObject({
      kind: "struct",
      struct: "RegD2HFis",
      count: 1,
      size: 20,
    });
    const dw0 = member("CommandHeader", "DW0");
    expect(dw0.kind === "scalar" && dw0.fields.find((f) => f.name === "PRDTL")).toMatchObject({
      msb: 31,
      lsb: 16,
      mask: 0xffff0000,
      access: "rw",
    });
  });

  it("binds the mediator to registers, fields and structures", () => {
    const med = m().mediator!;
    expect(med.protocol).toBe("slots");
    expect(med.slots).toEqual({ block: "port", register: "CI" });
    expect(med.queue).toEqual({ block: "port", register: "SACT" });
    expect(med.commands).toEqual({ set: "ata", struct: "CommandTable", member: "CFIS" });
    expect(med.direction).toEqual({ struct: "CommandHeader", member: "DW0", field: "W" });
    expect(med.transferred).toEqual({ struct: "CommandHeader", member: "PRDBC", field: null });
    expect(med.start).toEqual({
      control: { block: "port", register: "CMD", field: "ST" },
      running: { block: "port", register: "CMD", field: "CR" },
    });
    expect(med.completions.map((c) => [c.queued, c.fis, c.at.member, c.raise.field])).toEqual([
      [false, "RegD2HFis", "RFIS", "DHRS"],
      [true, "SetDeviceBitsFis", "SDBFIS", "SDBS"],
    ]);
    expect(med.status).toEqual({
      status: { block: "port", register: "TFD", field: "STS" },
      error: { block: "port", register: "TFD", field: "ERR" },
    });
    expect(med.interrupt.gate).toEqual({ block: "host", register: "GHC", field: "IE" });
    expect(med.traps.find((t) => t.role === "reset")).toMatchObject({
      access: "write",
      block: "host",
      register: "GHC",
      field: "HR",
    });
    expect(
      med.traps.filter((t) => t.role === "issue").map((t) => `${t.access} ${t.block}.${t.register}`),
    ).toEqual(["write port.CI"]);
  });

  it("puts spans on model elements", () => {
    const cap = reg("host", "CAP");
    const line = text.split("\n")[cap.span.line - 1]!;
    expect(line.slice(cap.span.column - 1, cap.span.column - 1 + cap.span.length)).toBe("CAP");
  });

  it("does not depend on declaration order", () => {
    // Cut the spec into its top-level declarations (by the lines they start on) and reverse them.
    const ast = parseSpec(text, "spec/ahci.med").ast!;
    const lines = text.split("\n");
    const starts = ast.declarations.map((d) => d.span.line - 1);
    const chunks = starts.map((start, i) => lines.slice(start, starts[i + 1] ?? lines.length).join("\n"));
    const reversed = [...chunks].reverse().join("\n");
    const again = analyzeSpec(reversed, "spec/ahci.med");
    expect(again.diagnostics).toEqual([]);
    const strip = (x: DeviceModel | null) =>
      JSON.parse(JSON.stringify(x, (k, v) => (k === "span" ? undefined : v)));
    const sortByName = <T extends { name: string }>(xs: T[]) =>
      [...xs].sort((a, b) => a.name.localeCompare(b.name));
    const a = strip(model);
    const b = strip(again.model);
    for (const key of ["enums", "blocks", "structs", "commandSets"]) {
      a[key] = sortByName(a[key]);
      b[key] = sortByName(b[key]);
    }
    a.links.reverse();
    expect(b).toEqual(a);
  });
});
