import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import type { DeviceModel } from "../../generator/model.ts";
import { analyzeSpec } from "../../grammar/index.ts";

const file = "test/fixtures/specs/queue-device.med";
const text = readFileSync(new URL(`../../${file}`, import.meta.url), "utf8");
const { model, diagnostics } = analyzeSpec(text, file);

function m(): DeviceModel {
  if (model === null) throw new Error(`${file} did not check`);
  return model;
}

describe("an NVMe-like queue-and-doorbell device (not AHCI)", () => {
  it("checks without any diagnostic", () => {
    expect(diagnostics).toEqual([]);
    expect(model).not.toBeNull();
  });

  it("has no mediator and keeps unknown device keys in extra", () => {
    expect(m().mediator).toBeNull();
    expect(m().identity).toMatchObject({
      vendor: 0x1b36,
      device: 0x0010,
      classCode: 0x010802,
      bar: 0,
      barSize: 0x1080,
    });
    expect(m().identity.extra).toEqual({ max_queues: 16 });
  });

  it("repeats the doorbell pair with a stride", () => {
    const db = m().blocks.find((b) => b.name === "doorbell")!;
    expect([db.count, db.offset, db.stride, db.size]).toEqual([16, 0x1000, 8, 8]);
    expect(db.registers.map((r) => [r.name, r.offset, r.masks.wo, r.masks.reserved])).toEqual([
      ["SQTDBL", 0, 0xffff, 0xffff0000],
      ["CQHDBL", 4, 0xffff, 0xffff0000],
    ]);
  });

  it("computes register resets and masks", () => {
    const regs = m().blocks.find((b) => b.name === "regs")!.registers;
    const cap = regs.find((r) => r.name === "CAP")!;
    expect(cap.reset).toBe((0x20 << 24) + (1 << 16) + 0x3ff);
    const csts = regs.find((r) => r.name === "CSTS")!;
    expect(csts.volatile).toBe(true);
    expect(csts.masks.w1c).toBe(1 << 4);
    expect(csts.masks.ro).toBe(0b101111);
    expect(csts.fields.find((f) => f.name === "SHST")!.enumName).toBe("ShutdownStatus");
    expect(regs.find((r) => r.name === "INTMS")!.masks.w1s).toBe(0xffffffff);
  });

  it("links the admin queue base registers with 4 KiB alignment", () => {
    expect(m().links.map((l) => [l.from.low, l.from.high, l.align, l.lowMask])).toEqual([
      ["ASQ", "ASQU", 4096, 0xfffff000],
      ["ACQ", "ACQU", 4096, 0xfffff000],
    ]);
  });

  it("assembles the 53-bit starting LBA from two u32 halves", () => {
    const sqe = m().structs.find((s) => s.name === "SubmissionEntry")!;
    expect(sqe.size).toBe(64);
    expect(sqe.values.find((v) => v.name === "SLBA")).toMatchObject({
      width: 53,
      parts: [
        { member: "SLBA_HI", msb: 20, lsb: 0, width: 21 },
        { member: "SLBA_LO", msb: 31, lsb: 0, width: 32 },
      ],
    });
    expect(sqe.values.find((v) => v.name === "NLB")!.parts).toEqual([
      { member: "CDW12", msb: 15, lsb: 0, width: 16 },
    ]);
    expect(sqe.members.find((x) => x.name === "PRP1")).toMatchObject({
      kind: "scalar",
      type: "u64",
      offset: 0x18,
      size: 8,
    });
  });

  it("decodes read and write with a 0-based block count (count NLB + 1)", () => {
    const nvm = m().commandSets[0]!;
    expect([nvm.name, nvm.struct, nvm.member]).toEqual(["nvm", "SubmissionEntry", "OPC"]);
    expect(nvm.presets).toEqual([{ member: "FLAGS", field: "PSDT", value: 0 }]);
    expect(nvm.commands.map((c) => [c.name, c.opcode, c.kind, c.lba, c.count, c.transfer])).toEqual([
      ["FLUSH", 0x00, "flush", null, null, "none"],
      ["WRITE", 0x01, "write", "SLBA", { from: "NLB", zeroMeans: 0, add: 1 }, "dma"],
      ["READ", 0x02, "read", "SLBA", { from: "NLB", zeroMeans: 0, add: 1 }, "dma"],
    ]);
  });

  it("lays out the completion entry with its status bits", () => {
    const cqe = m().structs.find((s) => s.name === "CompletionEntry")!;
    expect(cqe.size).toBe(16);
    const status = cqe.members.find((x) => x.name === "STATUS")!;
    expect(status.kind === "scalar" && status.fields.map((f) => [f.name, f.mask])).toEqual([
      ["DNR", 0x8000],
      ["M", 0x4000],
      ["CRD", 0x3000],
      ["SCT", 0x0e00],
      ["SC", 0x01fe],
      ["P", 0x0001],
    ]);
  });
});
