/**
 * The generated RegisterFile against a small, independent model written here: one raw value per
 * register, and per bit the access kind of the field holding it (taken from the checked model's
 * fields, not from the generated masks or tables). A software write, per bit of the written byte
 * lanes: rw and wo replace, w1c clears on 1, w1s sets on 1, ro and reserved keep. A software read
 * returns 0 for wo and reserved bits. The device side (set, setBits, clearBits) stores bits as
 * they come; reset and resetRange restore the reset values assembled from the field resets.
 *
 * fast-check drives random sequences of software writes (offsets among every register of every
 * copy of every block, sizes 1/2/4 aligned), device-side changes and resets, and compares read(),
 * get() and write()'s return value after every step for every touched register. Spot checks use
 * hand values from the AHCI 1.3.1 specification.
 *
 * Run for the checked-in AHCI output and for the queue-device spec (write-only doorbells, w1s/w1c
 * interrupt masks), compiled at run time into a temporary directory.
 */

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import * as ahci from "../../generated/ahci/index.ts";
import type { AccessKind, DeviceModel, FieldModel } from "../../generator/model.ts";
import {
  AHCI_SPEC,
  compileFile,
  importFile,
  type ModuleRecord,
  modelOf,
  QUEUE_SPEC,
  tempDir,
  writeFiles,
} from "./helpers.ts";

/** What the tests use of a generated RegisterFile. */
interface RegisterFileLike {
  reset(): void;
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): number;
  get(offset: number): number;
  set(offset: number, value: number): void;
  setBits(offset: number, bits: number): void;
  clearBits(offset: number, bits: number): void;
  resetRange(offset: number, size: number): void;
}

const queueDir = tempDir("registers-queue");
afterAll(() => queueDir.remove());
const queueCompiled = compileFile(QUEUE_SPEC);
writeFiles(queueDir.path, queueCompiled.files);
const queueModule = await importFile<ModuleRecord>(`${queueDir.path}/index.ts`);

/** One register at its absolute offset in the window, with the access kind of each of its 32 bits. */
interface Reg {
  readonly name: string;
  readonly offset: number;
  readonly reset: number;
  readonly bits: readonly AccessKind[];
}

function bitsOf(fields: readonly FieldModel[]): AccessKind[] {
  const bits = new Array<AccessKind>(32).fill("rsvd");
  for (const f of fields) for (let b = f.lsb; b <= f.msb; b++) bits[b] = f.access;
  return bits;
}

function resetOf(fields: readonly FieldModel[]): number {
  return fields.reduce((value, f) => value + f.reset * 2 ** f.lsb, 0);
}

/** Every register of every copy of every block, and the dwords that hold none. */
class Layout {
  readonly registers: readonly Reg[];
  readonly byOffset: ReadonlyMap<number, Reg>;
  readonly unmapped: readonly number[];
  /** The copies of every block, as [offset, size] ranges (a port reset, for example). */
  readonly blockRanges: readonly (readonly [number, number])[];

  constructor(readonly model: DeviceModel) {
    this.registers = model.blocks.flatMap((block) =>
      Array.from({ length: block.count }, (_, copy) =>
        block.registers.map((r) => ({
          name: block.count > 1 ? `${block.name}${copy}.${r.name}` : `${block.name}.${r.name}`,
          offset: block.offset + copy * block.stride + r.offset,
          reset: resetOf(r.fields),
          bits: bitsOf(r.fields),
        })),
      ).flat(),
    );
    this.byOffset = new Map(this.registers.map((r) => [r.offset, r]));
    const unmapped: number[] = [];
    for (let offset = 0; offset < model.identity.barSize; offset += 4)
      if (!this.byOffset.has(offset) && unmapped.length < 40 && offset % 12 === 0) unmapped.push(offset);
    unmapped.push(model.identity.barSize, model.identity.barSize + 4);
    this.unmapped = unmapped;
    this.blockRanges = model.blocks.flatMap((b) =>
      Array.from({ length: b.count }, (_, i) => [b.offset + i * b.stride, b.size] as const),
    );
  }
}

/** The independent model: raw values of the registers; unmapped dwords read 0. */
class Model {
  readonly raw = new Map<number, number>();
  constructor(private readonly layout: Layout) {
    this.reset();
  }
  reset(): void {
    for (const r of this.layout.registers) this.raw.set(r.offset, r.reset);
  }
  resetRange(offset: number, size: number): void {
    for (const r of this.layout.registers)
      if (r.offset >= offset && r.offset < offset + size) this.raw.set(r.offset, r.reset);
  }
  get(offset: number): number {
    return this.raw.get(offset) ?? 0;
  }
  /** Software write: per bit of the written lanes, by the access kind of the bit. */
  write(offset: number, size: number, value: number): void {
    const base = offset & ~3;
    const reg = this.layout.byOffset.get(base);
    if (reg === undefined) return;
    let next = this.get(base);
    const firstBit = (offset - base) * 8;
    for (let i = 0; i < size * 8; i++) {
      const b = firstBit + i;
      const v = Math.floor(value / 2 ** i) % 2;
      const mask = 2 ** b;
      const current = Math.floor(next / mask) % 2;
      let bit = current;
      switch (reg.bits[b]) {
        case "rw":
        case "wo":
          bit = v;
          break;
        case "w1c":
          if (v) bit = 0;
          break;
        case "w1s":
          if (v) bit = 1;
          break;
        case "ro":
        case "rsvd":
          break;
      }
      next += (bit - current) * mask;
    }
    this.raw.set(base, next);
  }
  /** Software read: wo and reserved bits read 0. */
  read(offset: number, size: number): number {
    const base = offset & ~3;
    const reg = this.layout.byOffset.get(base);
    if (reg === undefined) return 0;
    const raw = this.get(base);
    let out = 0;
    const firstBit = (offset - base) * 8;
    for (let i = 0; i < size * 8; i++) {
      const b = firstBit + i;
      const kind = reg.bits[b];
      if (kind === "wo" || kind === "rsvd") continue;
      out += (Math.floor(raw / 2 ** b) % 2) * 2 ** i;
    }
    return out;
  }
  set(offset: number, value: number): void {
    if (this.layout.byOffset.has(offset)) this.raw.set(offset, value >>> 0);
  }
  setBits(offset: number, bits: number): void {
    if (this.layout.byOffset.has(offset)) this.raw.set(offset, (this.get(offset) | bits) >>> 0);
  }
  clearBits(offset: number, bits: number): void {
    if (this.layout.byOffset.has(offset)) this.raw.set(offset, (this.get(offset) & ~bits) >>> 0);
  }
}

type Step =
  | {
      readonly op: "write";
      readonly pick: number;
      readonly size: 1 | 2 | 4;
      readonly lane: number;
      readonly value: number;
    }
  | { readonly op: "set" | "setBits" | "clearBits"; readonly pick: number; readonly value: number }
  | { readonly op: "reset" }
  | { readonly op: "resetBlock"; readonly pick: number };

const u32 = fc.oneof(fc.nat({ max: 0xffffffff }), fc.constantFrom(0, 0xffffffff, 1, 0x80000000));
const steps: fc.Arbitrary<Step[]> = fc.array(
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        op: fc.constant("write" as const),
        pick: fc.nat(),
        size: fc.constantFrom(1 as const, 2 as const, 4 as const),
        lane: fc.nat({ max: 3 }),
        value: u32,
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        op: fc.constantFrom("set" as const, "setBits" as const, "clearBits" as const),
        pick: fc.nat(),
        value: u32,
      }),
    },
    { weight: 1, arbitrary: fc.constant({ op: "reset" as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("resetBlock" as const), pick: fc.nat() }) },
  ),
  { minLength: 1, maxLength: 40 },
);

function check(file: RegisterFileLike, m: Model, layout: Layout, offsets: Iterable<number>): void {
  for (const offset of offsets) {
    const name = layout.byOffset.get(offset)?.name ?? `unmapped 0x${offset.toString(16)}`;
    if (layout.byOffset.has(offset)) expect(file.get(offset), `get ${name}`).toBe(m.get(offset));
    expect(file.read(offset, 4), `read32 ${name}`).toBe(m.read(offset, 4));
    for (const lane of [0, 2])
      expect(file.read(offset + lane, 2), `read16 ${name}+${lane}`).toBe(m.read(offset + lane, 2));
    for (const lane of [0, 1, 2, 3])
      expect(file.read(offset + lane, 1), `read8 ${name}+${lane}`).toBe(m.read(offset + lane, 1));
  }
}

const devices: readonly { label: string; model: DeviceModel; module: ModuleRecord }[] = [
  { label: "ahci", model: modelOf(AHCI_SPEC), module: ahci as unknown as ModuleRecord },
  { label: "queue-device", model: queueCompiled.model!, module: queueModule },
];

for (const { label, model, module } of devices) {
  const layout = new Layout(model);
  const RegisterFile = module.RegisterFile as new () => RegisterFileLike;
  const registerName = module.registerName as (offset: number) => string | undefined;
  /** A few registers per run (so steps collide on them), drawn from all registers plus unmapped dwords. */
  const workingSet = fc.subarray([...layout.registers.map((r) => r.offset), ...layout.unmapped], {
    minLength: 1,
    maxLength: 6,
  });

  describe(`${label}: the independent model agrees with the checked model's own masks`, () => {
    it("every register is 32 bits wide and dword aligned", () => {
      for (const b of model.blocks)
        for (const r of b.registers) {
          expect(r.width, `${b.name}.${r.name}`).toBe(32);
          expect(r.offset % 4, `${b.name}.${r.name}`).toBe(0);
        }
    });

    it("reset values and access masks follow from the fields", () => {
      for (const b of model.blocks)
        for (const r of b.registers) {
          const bits = bitsOf(r.fields);
          const mask = (kind: AccessKind) => bits.reduce((m, k, i) => (k === kind ? m + 2 ** i : m), 0);
          expect(r.reset, `${b.name}.${r.name} reset`).toBe(resetOf(r.fields));
          expect(
            [r.masks.ro, r.masks.rw, r.masks.w1c, r.masks.w1s, r.masks.wo, r.masks.reserved],
            `${b.name}.${r.name} masks`,
          ).toEqual([mask("ro"), mask("rw"), mask("w1c"), mask("w1s"), mask("wo"), mask("rsvd")]);
          const selfclear = r.fields.filter((f) => f.selfclear).reduce((m, f) => m + f.mask, 0);
          expect(r.masks.selfclear >>> 0, `${b.name}.${r.name} selfclear`).toBe(selfclear);
        }
    });
  });

  describe(`${label}: RegisterFile against the independent model`, () => {
    it("after construction every register reads its reset value, unmapped dwords read 0", () => {
      check(new RegisterFile(), new Model(layout), layout, [
        ...layout.registers.map((r) => r.offset),
        ...layout.unmapped,
      ]);
    });

    it("random writes, device changes and resets: read() matches after every step", () => {
      fc.assert(
        fc.property(workingSet, steps, (pool, sequence) => {
          const file = new RegisterFile();
          const m = new Model(layout);
          const touched = new Set<number>();
          for (const step of sequence) {
            switch (step.op) {
              case "write": {
                const base = pool[step.pick % pool.length]!;
                const lane = step.size === 4 ? 0 : step.size === 2 ? step.lane & 2 : step.lane;
                const value = step.size === 4 ? step.value : step.value % 2 ** (step.size * 8);
                const before = m.get(base);
                const returned = file.write(base + lane, step.size, value);
                if (layout.byOffset.has(base))
                  expect(returned, "write returns the value before").toBe(before);
                m.write(base + lane, step.size, value);
                touched.add(base);
                break;
              }
              case "set":
              case "setBits":
              case "clearBits": {
                const base = pool[step.pick % pool.length]!;
                if (!layout.byOffset.has(base)) break; // the device side is defined for registers only
                file[step.op](base, step.value);
                m[step.op](base, step.value);
                touched.add(base);
                break;
              }
              case "reset":
                file.reset();
                m.reset();
                break;
              case "resetBlock": {
                const [offset, size] = layout.blockRanges[step.pick % layout.blockRanges.length]!;
                file.resetRange(offset, size);
                m.resetRange(offset, size);
                break;
              }
            }
            check(file, m, layout, touched);
          }
          // Registers nobody touched still read their reset values.
          check(
            file,
            m,
            layout,
            layout.registers
              .filter((r) => !touched.has(r.offset))
              .slice(0, 40)
              .map((r) => r.offset),
          );
        }),
        { numRuns: 300 },
      );
    });

    it("registerName names every register at each of its byte offsets, and nothing else", () => {
      for (const r of layout.registers)
        for (const lane of [0, 1, 2, 3])
          expect(registerName(r.offset + lane), `0x${r.offset.toString(16)}`).toBe(r.name);
      for (const offset of layout.unmapped)
        expect(registerName(offset), `0x${offset.toString(16)}`).toBeUndefined();
      expect(registerName(-4)).toBeUndefined();
    });
  });
}

describe("queue-device by hand", () => {
  const file = () => new (queueModule.RegisterFile as new () => RegisterFileLike)();

  it("doorbells are write-only: a write is stored but reads 0", () => {
    const f = file();
    f.write(0x1000 + 8 * 3, 4, 0x1234);
    expect(f.read(0x1000 + 8 * 3, 4)).toBe(0);
    expect(f.get(0x1000 + 8 * 3)).toBe(0x1234);
    expect(f.read(0x1000 + 8 * 3 + 4, 4)).toBe(0);
  });

  it("CAP reset is TO=0x20, CQR=1, MQES=0x3FF; CSTS.NSSRO is w1c inside a ro register", () => {
    const f = file();
    expect(f.read(0x00, 4)).toBe(0x200103ff);
    f.set(0x1c, 0x1f);
    f.write(0x1c, 4, 0xffffffff);
    expect(f.read(0x1c, 4)).toBe(0x0f);
  });
});

describe("AHCI 1.3.1 hand values", () => {
  it("there are 11 host registers and 17 per port, 32 ports", () => {
    const layout = new Layout(modelOf(AHCI_SPEC));
    expect(layout.registers.length).toBe(11 + 32 * 17);
  });

  const PORT = (i: number, reg: number) => 0x100 + i * 0x80 + reg;

  it("CAP resets to 0xC9349F00 and ignores writes", () => {
    // S64A | SNCQ | SSS | SCLO | ISS=3 | SAM | PMD | NCS=31
    const file = new ahci.RegisterFile();
    expect(file.read(0x00, 4)).toBe(0xc9349f00);
    expect(ahci.HOST_CAP_RESET).toBe(0xc9349f00);
    file.write(0x00, 4, 0);
    file.write(0x00, 4, 0xffffffff);
    expect(file.read(0x00, 4)).toBe(0xc9349f00);
    expect(file.read(0x01, 1)).toBe(0x9f);
  });

  it("PI, VS and CCC_CTL reset values", () => {
    const file = new ahci.RegisterFile();
    expect(file.read(0x0c, 4)).toBe(1);
    expect(file.read(0x10, 4)).toBe(0x00010301);
    expect(file.read(0x14, 4)).toBe(0x00010100);
  });

  it("PxTFD resets to 0x7F and PxSIG to 0xFFFFFFFF on every port; both are read-only", () => {
    const file = new ahci.RegisterFile();
    for (let i = 0; i < 32; i++) {
      expect(file.read(PORT(i, 0x20), 4), `port ${i} TFD`).toBe(0x7f);
      expect(file.read(PORT(i, 0x24), 4), `port ${i} SIG`).toBe(0xffffffff);
      expect(file.read(PORT(i, 0x18), 4), `port ${i} CMD`).toBe(0x2); // SUD
    }
    file.write(PORT(3, 0x20), 4, 0);
    file.write(PORT(3, 0x24), 2, 0);
    expect(file.read(PORT(3, 0x20), 4)).toBe(0x7f);
    expect(file.read(PORT(3, 0x24), 4)).toBe(0xffffffff);
    file.set(PORT(3, 0x20), 0x0150);
    expect(file.read(PORT(3, 0x20), 4)).toBe(0x150);
  });

  it("GHC: HR and IE are software-writable, MRSM read-only, bits 30:3 reserved; HR self-clears by the device", () => {
    const file = new ahci.RegisterFile();
    file.write(0x04, 4, 0xffffffff);
    expect(file.read(0x04, 4)).toBe(0x80000003);
    file.clearBits(0x04, 1); // the HBA finishes its reset
    expect(file.read(0x04, 4)).toBe(0x80000002);
    file.set(0x04, 0x7ffffffc); // reserved bits set behind software's back still read 0 ...
    expect(file.read(0x04, 4)).toBe(0x4); // ... but MRSM (ro) reads as stored
    expect(ahci.BLOCKS[0]!.registers.find((r) => r.name === "GHC")!.selfClearing).toBe(1);
  });

  it("PxIS is write-1-to-clear; its ro bits (PRCS, PCS, UFS) are not cleared by software", () => {
    const file = new ahci.RegisterFile();
    const IS = PORT(0, 0x10);
    file.setBits(IS, 0x4040_0051 | 0x0000_0001); // TFES, PRCS, PCS, UFS, DHRS
    file.write(IS, 4, 0); // writing 0 changes nothing
    expect(file.read(IS, 4)).toBe(0x40400051);
    file.write(IS, 4, 0x1); // clears DHRS
    expect(file.read(IS, 4)).toBe(0x40400050);
    file.write(IS + 3, 1, 0x40); // a byte write to lane 3 clears TFES
    expect(file.read(IS, 4)).toBe(0x00400050);
    file.write(IS, 4, 0xffffffff); // PRCS, PCS and UFS are read-only
    expect(file.read(IS, 4)).toBe(0x00400050);
  });

  it("PxCI is write-1-to-set; software cannot clear it, the device does", () => {
    const file = new ahci.RegisterFile();
    const CI = PORT(5, 0x38);
    file.write(CI, 4, 0x5);
    file.write(CI, 4, 0x2);
    expect(file.read(CI, 4)).toBe(0x7);
    file.write(CI, 4, 0);
    expect(file.read(CI, 4)).toBe(0x7);
    file.clearBits(CI, 0x1);
    expect(file.read(CI, 4)).toBe(0x6);
    file.write(CI + 2, 2, 0x8000);
    expect(file.read(CI, 4)).toBe(0x80000006);
  });

  it("PxCLB keeps bits 9:0 zero (1 KiB alignment); PxFB bits 7:0", () => {
    const file = new ahci.RegisterFile();
    file.write(PORT(1, 0x00), 4, 0xffffffff);
    file.write(PORT(1, 0x08), 4, 0xffffffff);
    expect(file.read(PORT(1, 0x00), 4)).toBe(0xfffffc00);
    expect(file.read(PORT(1, 0x08), 4)).toBe(0xffffff00);
  });

  it("resetRange resets one port only", () => {
    const file = new ahci.RegisterFile();
    file.write(PORT(0, 0x38), 4, 0xff);
    file.write(PORT(1, 0x38), 4, 0xff);
    file.resetRange(PORT(1, 0), 0x80);
    expect(file.read(PORT(0, 0x38), 4)).toBe(0xff);
    expect(file.read(PORT(1, 0x38), 4)).toBe(0);
  });

  it("registerName by hand", () => {
    expect(ahci.registerName(0x138)).toBe("port0.CI");
    expect(ahci.registerName(0x00)).toBe("host.CAP");
    expect(ahci.registerName(0x04)).toBe("host.GHC");
    expect(ahci.registerName(0x100 + 31 * 0x80 + 0x38)).toBe("port31.CI");
    expect(ahci.registerName(0x1a0)).toBe("port1.TFD");
    expect(ahci.registerName(0x2c)).toBeUndefined();
    expect(ahci.registerName(0x148)).toBeUndefined();
    expect(ahci.registerName(0x1100)).toBeUndefined();
  });

  it("the window is 0x1100 bytes and port offsets follow the stride", () => {
    expect(ahci.WINDOW_SIZE).toBe(0x1100);
    expect(ahci.portOffset(2, ahci.PORT_CI)).toBe(0x100 + 2 * 0x80 + 0x38);
  });
});
