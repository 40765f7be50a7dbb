/**
 * Properties of the generated structure codecs, for EVERY structure of the model: the list of
 * structures comes from the checked model and the functions are looked up by name in the
 * generated module (decodeX / encodeX / emptyX), so a new structure in the spec is covered
 * without touching this file.
 *
 * The AHCI output is the checked-in generated/ahci/; the queue-device spec (u64 members, values
 * made of parts of wider members) is compiled at run time into a temporary directory and
 * imported from there.
 */

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import * as ahci from "../../generated/ahci/index.ts";
import type { DeviceModel, MemberModel, StructModel, ValueModel } from "../../generator/model.ts";
import {
  AHCI_SPEC,
  camel,
  compileFile,
  coveredBytes,
  fn,
  importFile,
  type ModuleRecord,
  modelOf,
  pascal,
  QUEUE_SPEC,
  tempDir,
  valueAccessorNames,
  writeFiles,
} from "./helpers.ts";

type Struct = Record<string, unknown>;
type Decode = (bytes: Uint8Array, offset?: number) => Struct;
type Encode = (value: Struct, bytes?: Uint8Array, offset?: number) => Uint8Array;
type Empty = () => Struct;
type Getter = (value: Struct) => number;
type Setter = (value: Struct, n: number) => void;

// The queue-device output, compiled now and imported from a temporary directory.
const queueDir = tempDir("codecs-queue");
afterAll(() => queueDir.remove());
const queueCompiled = compileFile(QUEUE_SPEC);
writeFiles(queueDir.path, queueCompiled.files);
const queueModule = await importFile<ModuleRecord>(`${queueDir.path}/index.ts`);

const devices: readonly { label: string; model: DeviceModel; module: ModuleRecord }[] = [
  { label: "ahci", model: modelOf(AHCI_SPEC), module: ahci as unknown as ModuleRecord },
  { label: "queue-device", model: queueCompiled.model!, module: queueModule },
];

/** SCREAMING_SNAKE of a structure name, as the generator names its constants. */
function screaming(name: string): string {
  return name
    .replace(/([a-z])([A-Z])/g, "$1_$2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .toUpperCase();
}

/** Random values of the members a codec decodes (tail arrays are not part of the value). */
function structArb(s: StructModel, structs: ReadonlyMap<string, StructModel>): fc.Arbitrary<Struct> {
  const shape: Record<string, fc.Arbitrary<unknown>> = {};
  for (const m of s.members) {
    const arb = memberArb(m, structs);
    if (arb) shape[m.name] = arb;
  }
  return fc.record(shape) as fc.Arbitrary<Struct>;
}

function memberArb(m: MemberModel, structs: ReadonlyMap<string, StructModel>): fc.Arbitrary<unknown> | null {
  switch (m.kind) {
    case "scalar":
      if (m.type === "u64") return fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
      return fc.integer({ min: 0, max: 2 ** (m.size * 8) - 1 });
    case "bytes":
      return fc.uint8Array({ minLength: m.size, maxLength: m.size });
    case "struct": {
      const inner = structArb(structs.get(m.struct)!, structs);
      return m.count === 1 ? inner : fc.array(inner, { minLength: m.count, maxLength: m.count });
    }
    case "tail":
      return null;
  }
}

/** The bytes of a structure with every member zero except its constants (FIS types), recursively. */
function constantBytes(s: StructModel, structs: ReadonlyMap<string, StructModel>): Uint8Array {
  const out = new Uint8Array(s.size);
  for (const m of s.members) {
    if (m.kind === "scalar" && m.constant) {
      for (let b = 0; b < m.size; b++)
        out[m.offset + b] = Number((BigInt(m.constant.value) >> BigInt(8 * b)) & 0xffn);
    } else if (m.kind === "struct") {
      const inner = structs.get(m.struct)!;
      const bytes = constantBytes(inner, structs);
      for (let i = 0; i < m.count; i++) out.set(bytes, m.offset + i * inner.size);
    }
  }
  return out;
}

function bytesOf(size: number): fc.Arbitrary<Uint8Array> {
  return fc.uint8Array({ minLength: size, maxLength: size });
}

for (const { label, model, module } of devices) {
  const structs = new Map(model.structs.map((s) => [s.name, s]));

  describe(`${label}: structure codecs`, () => {
    it("the model has structures, and the module exports a codec for each", () => {
      expect(model.structs.length).toBeGreaterThan(0);
      for (const s of model.structs) {
        for (const prefix of ["decode", "encode", "empty"])
          expect(typeof module[`${prefix}${s.name}`], `${prefix}${s.name}`).toBe("function");
        expect(module[`${screaming(s.name)}_SIZE`], `${screaming(s.name)}_SIZE`).toBe(s.size);
      }
    });

    for (const s of model.structs) {
      const decode = fn<Decode>(module, `decode${s.name}`);
      const encode = fn<Encode>(module, `encode${s.name}`);
      const empty = fn<Empty>(module, `empty${s.name}`);
      const covered = coveredBytes(s, structs);
      const values = structArb(s, structs);

      describe(s.name, () => {
        it("member offsets are exported and match the model", () => {
          for (const m of s.members)
            expect(module[`${screaming(s.name)}_${screaming(m.name)}`], `${s.name}.${m.name}`).toBe(m.offset);
        });

        it("encode(decode(bytes)) into a fresh buffer gives the bytes back (reserved gaps read as 0)", () => {
          fc.assert(
            fc.property(bytesOf(s.size), (bytes) => {
              const out = encode(decode(bytes));
              expect(out.length).toBe(s.size);
              const expected = bytes.map((b, i) => (covered[i] ? b : 0));
              expect(Array.from(out)).toEqual(Array.from(expected));
            }),
          );
        });

        it("encode(decode(bytes)) back into the same buffer is an exact round trip", () => {
          fc.assert(
            fc.property(bytesOf(s.size), (bytes) => {
              const copy = bytes.slice();
              const out = encode(decode(copy), copy);
              expect(out).toBe(copy);
              expect(Array.from(copy)).toEqual(Array.from(bytes));
            }),
          );
        });

        it("decode(encode(value)) deep-equals the value", () => {
          fc.assert(
            fc.property(values, (value) => {
              expect(decode(encode(value))).toEqual(value);
            }),
          );
        });

        it("at an offset inside a larger buffer, encode touches only the structure's bytes", () => {
          fc.assert(
            fc.property(
              values,
              fc.integer({ min: 0, max: 24 }),
              fc.integer({ min: 0, max: 24 }),
              fc.uint8Array({ minLength: s.size + 48, maxLength: s.size + 48 }),
              (value, offset, after, background) => {
                const buffer = background.slice(0, offset + s.size + after);
                const before = buffer.slice();
                encode(value, buffer, offset);
                for (let i = 0; i < buffer.length; i++) {
                  const inside = i >= offset && i < offset + s.size && covered[i - offset];
                  if (!inside) expect(buffer[i], `byte ${i} outside the members`).toBe(before[i]);
                }
                expect(decode(buffer, offset)).toEqual(value);
                // ... and decoding at an offset is decoding the slice.
                expect(decode(buffer, offset)).toEqual(decode(buffer.slice(offset, offset + s.size)));
              },
            ),
          );
        });

        it("decoded bytes members are copies, not views of the input", () => {
          const bytesMembers = s.members.filter((m) => m.kind === "bytes");
          fc.assert(
            fc.property(bytesOf(s.size), (bytes) => {
              const decoded = decode(bytes);
              const snapshot = decode(bytes.slice());
              bytes.fill(0xa5);
              for (const m of bytesMembers) expect(decoded[m.name]).toEqual(snapshot[m.name]);
            }),
            { numRuns: bytesMembers.length ? 50 : 1 },
          );
        });

        it("empty() is all zeros except the constants", () => {
          const expected = constantBytes(s, structs);
          expect(Array.from(encode(empty()))).toEqual(Array.from(expected));
          expect(empty()).toEqual(decode(expected));
          // Two calls give independent objects.
          expect(empty()).not.toBe(empty());
        });

        it("arrays of structures decode as arrays of the declared length", () => {
          for (const m of s.members) {
            if (m.kind !== "struct") continue;
            const decoded = decode(new Uint8Array(s.size))[m.name];
            if (m.count > 1) expect((decoded as unknown[]).length).toBe(m.count);
            else expect(Array.isArray(decoded)).toBe(false);
          }
        });

        it("tail arrays are not part of the value; their entries sit at the offset function's result", () => {
          const tails = s.members.filter((m) => m.kind === "tail");
          for (const m of tails) {
            expect(Object.keys(decode(new Uint8Array(s.size)))).not.toContain(m.name);
            const element = structs.get(m.struct)!;
            const offsetOf = fn<(index: number) => number>(
              module,
              `${camel(s.name)}${pascal(m.name).replace(/^./, (c) => c.toUpperCase())}Offset`,
            );
            const decodeEntry = fn<Decode>(module, `decode${element.name}`);
            const encodeEntry = fn<Encode>(module, `encode${element.name}`);
            expect(m.offset).toBeGreaterThanOrEqual(s.size);
            fc.assert(
              fc.property(
                values,
                fc.array(structArb(element, structs), { minLength: 0, maxLength: 8 }),
                (head, entries) => {
                  for (let i = 0; i < 8; i++) expect(offsetOf(i)).toBe(m.offset + i * element.size);
                  const buffer = new Uint8Array(m.offset + entries.length * element.size);
                  encode(head, buffer);
                  entries.forEach((e, i) => {
                    encodeEntry(e, buffer, offsetOf(i));
                  });
                  expect(decode(buffer)).toEqual(head);
                  entries.forEach((e, i) => {
                    expect(decodeEntry(buffer, offsetOf(i))).toEqual(e);
                  });
                },
              ),
              { numRuns: 50 },
            );
          }
        });
      });
    }
  });

  describe(`${label}: values assembled from several members`, () => {
    const withValues = model.structs.filter((s) => s.values.length > 0);

    it("the model has values and the module exports a getter and a setter for each", () => {
      expect(withValues.length).toBeGreaterThan(0);
      for (const s of withValues)
        for (const v of s.values) {
          const { get, set } = valueAccessorNames(s.name, v.name);
          expect(typeof module[get], get).toBe("function");
          expect(typeof module[set], set).toBe("function");
        }
    });

    for (const s of withValues) {
      const structValues = structArb(s, structs);
      for (const v of s.values) {
        const { get, set } = valueAccessorNames(s.name, v.name);
        const getter = fn<Getter>(module, get);
        const setter = fn<Setter>(module, set);
        const n = fc.oneof(
          fc.bigInt({ min: 0n, max: 2n ** BigInt(v.width) - 1n }).map(Number),
          fc.constantFrom(0, 1, 2 ** v.width - 1, 2 ** (v.width - 1)),
        );

        describe(`${s.name}.${v.name} (${v.width} bits)`, () => {
          it("the parts' widths add up to the value's width", () => {
            expect(v.parts.reduce((w, p) => w + p.width, 0)).toBe(v.width);
            expect(v.width).toBeLessThanOrEqual(53);
          });

          it("set(n) then get() gives n back", () => {
            fc.assert(
              fc.property(structValues, n, (value, x) => {
                setter(value, x);
                expect(getter(value)).toBe(x);
              }),
            );
          });

          it("get() is the parts' bits, most significant part first (any other bits ignored)", () => {
            fc.assert(
              fc.property(structValues, (value) => {
                expect(getter(value)).toBe(independentGet(value, v));
              }),
            );
          });

          it("set() writes each part's bits and leaves every other bit and member alone", () => {
            fc.assert(
              fc.property(structValues, n, (value, x) => {
                const before = structuredClone(value);
                setter(value, x);
                expect(value).toEqual(independentSet(before, v, x));
              }),
            );
          });
        });
      }
    }
  });
}

/** Each part placed from the least significant end: [part, position of its lowest bit]. */
function placed(v: ValueModel): [ValueModel["parts"][number], number][] {
  let at = 0;
  return [...v.parts].reverse().map((p) => {
    const here = at;
    at += p.width;
    return [p, here];
  });
}

function independentGet(value: Struct, v: ValueModel): number {
  let n = 0n;
  for (const [p, at] of placed(v)) {
    const member = BigInt(value[p.member] as number | bigint);
    const bits = (member >> BigInt(p.lsb)) & ((1n << BigInt(p.width)) - 1n);
    n |= bits << BigInt(at);
  }
  return Number(n);
}

function independentSet(before: Struct, v: ValueModel, x: number): Struct {
  const after = structuredClone(before);
  for (const [p, at] of placed(v)) {
    const old = BigInt(after[p.member] as number | bigint);
    const fieldMask = ((1n << BigInt(p.width)) - 1n) << BigInt(p.lsb);
    const bits = ((BigInt(x) >> BigInt(at)) & ((1n << BigInt(p.width)) - 1n)) << BigInt(p.lsb);
    const next = (old & ~fieldMask) | bits;
    after[p.member] = typeof after[p.member] === "bigint" ? next : Number(next);
  }
  return after;
}

// ---------------------------------------------------------------------------------------------
// The AHCI values by hand, from the SATA register FIS layout (SATA 3.x, 10.3.4): byte offsets
// of LBA0..LBA5 are 4, 5, 6, 8, 9, 10; DEVICE is byte 7; COUNT is byte 12.

describe("ahci: register FIS values, byte layout by hand", () => {
  const LBA_BYTES = [4, 5, 6, 8, 9, 10];
  const DEVICE = 7;
  const COUNT = 12;
  const h2d = () => fc.uint8Array({ minLength: 20, maxLength: 20 }).map((b) => ahci.decodeRegH2DFis(b));

  it("LBA48: byte i of the LBA is (n / 256^i) & 0xff, at the LBA0..LBA5 offsets", () => {
    fc.assert(
      fc.property(h2d(), fc.bigInt({ min: 0n, max: 2n ** 48n - 1n }).map(Number), (fis, n) => {
        ahci.setRegH2DFisLba48(fis, n);
        const bytes = ahci.encodeRegH2DFis(fis);
        LBA_BYTES.forEach((offset, i) => {
          expect(bytes[offset], `LBA${i}`).toBe(Math.floor(n / 256 ** i) & 0xff);
        });
        expect(ahci.regH2DFisLba48(ahci.decodeRegH2DFis(bytes))).toBe(n);
      }),
    );
    const fis = ahci.emptyRegH2DFis();
    ahci.setRegH2DFisLba48(fis, 0x123456789abc);
    expect([fis.LBA0, fis.LBA1, fis.LBA2, fis.LBA3, fis.LBA4, fis.LBA5]).toEqual([
      0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12,
    ]);
  });

  it("LBA28: bytes 4, 5, 6 and DEVICE[3:0]; DEVICE[7:4] kept", () => {
    fc.assert(
      fc.property(h2d(), fc.integer({ min: 0, max: 2 ** 28 - 1 }), (fis, n) => {
        const device = fis.DEVICE;
        ahci.setRegH2DFisLba28(fis, n);
        const bytes = ahci.encodeRegH2DFis(fis);
        expect([bytes[4], bytes[5], bytes[6]]).toEqual([n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff]);
        expect(bytes[DEVICE]! & 0x0f).toBe(n >>> 24);
        expect(bytes[DEVICE]! & 0xf0).toBe(device & 0xf0);
        expect(ahci.regH2DFisLba28(ahci.decodeRegH2DFis(bytes))).toBe(n);
      }),
    );
    const fis = ahci.decodeRegH2DFis(new Uint8Array(20));
    fis.DEVICE = 0xe0;
    fis.LBA3 = 0x77; // not part of a 28-bit LBA
    ahci.setRegH2DFisLba28(fis, 0xabcdef1);
    expect([fis.LBA0, fis.LBA1, fis.LBA2, fis.DEVICE, fis.LBA3]).toEqual([0xf1, 0xde, 0xbc, 0xea, 0x77]);
    expect(ahci.regH2DFisLba28(fis)).toBe(0xabcdef1);
  });

  it("NCQ tag: COUNT[7:3], COUNT[2:0] kept", () => {
    fc.assert(
      fc.property(h2d(), fc.integer({ min: 0, max: 31 }), (fis, tag) => {
        const low = fis.COUNT & 7;
        ahci.setRegH2DFisNcqTag(fis, tag);
        const bytes = ahci.encodeRegH2DFis(fis);
        expect(bytes[COUNT]! >>> 3).toBe(tag);
        expect(bytes[COUNT]! & 7).toBe(low);
        expect(ahci.regH2DFisNcqTag(ahci.decodeRegH2DFis(bytes))).toBe(tag);
      }),
    );
    const fis = ahci.emptyRegH2DFis();
    fis.COUNT = 0x05;
    ahci.setRegH2DFisNcqTag(fis, 31);
    expect(fis.COUNT).toBe(0xfd);
  });

  it("COUNT16 and FEATURES16: low byte first", () => {
    const fis = ahci.emptyRegH2DFis();
    ahci.setRegH2DFisCount16(fis, 0x1234);
    ahci.setRegH2DFisFeatures16(fis, 0xabcd);
    const bytes = ahci.encodeRegH2DFis(fis);
    expect([bytes[12], bytes[13], bytes[3], bytes[11]]).toEqual([0x34, 0x12, 0xcd, 0xab]);
  });

  it("the FIS type constants are the SATA values", () => {
    expect(Array.from(ahci.encodeRegH2DFis(ahci.emptyRegH2DFis()).subarray(0, 1))).toEqual([0x27]);
    expect(ahci.emptyRegD2HFis().TYPE).toBe(0x34);
    expect(ahci.emptySetDeviceBitsFis().TYPE).toBe(0xa1);
    expect(ahci.emptyPioSetupFis().TYPE).toBe(0x5f);
    expect(ahci.emptyDmaSetupFis().TYPE).toBe(0x41);
    const rfis = ahci.encodeReceivedFis(ahci.emptyReceivedFis());
    expect([rfis[0x00], rfis[0x20], rfis[0x40], rfis[0x58]]).toEqual([0x41, 0x5f, 0x34, 0xa1]);
  });
});

// ---------------------------------------------------------------------------------------------
// The queue-device values by hand: SLBA = SLBA_HI[20:0] : SLBA_LO, NLB = CDW12[15:0].

describe("queue-device: values made of part of a wider member", () => {
  const qd = queueModule;
  const decode = fn<Decode>(qd, "decodeSubmissionEntry");
  const slba = fn<Getter>(qd, "submissionEntrySlba");
  const nlb = fn<Getter>(qd, "submissionEntryNlb");

  it("NLB ignores the other bits of CDW12 (LR [31], FUA [30])", () => {
    const entry = decode(new Uint8Array(64));
    entry.CDW12 = 0x4000_0007; // FUA set, NLB 7
    expect(nlb(entry)).toBe(7);
  });

  it("SLBA ignores SLBA_HI bits 31:21", () => {
    const entry = decode(new Uint8Array(64));
    entry.SLBA_LO = 0x89abcdef;
    entry.SLBA_HI = 0xffe0_0001; // only bit 0 belongs to the 53-bit SLBA
    expect(slba(entry)).toBe(0x1_89abcdef);
  });
});
