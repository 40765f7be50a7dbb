/**
 * The generated command decoder and encoder, driven by the command sets of the checked model:
 * every opcode 0..255 decodes without throwing (unknown ones as "other"), and for every command
 * the spec names, encode then decode gives back its LBA, sector count, tag, kind and queued flag
 * over the whole allowed range, with the count rules (`zero 65536`: 0 means the largest count;
 * `count NLB + 1`: a 0-based count) checked on the raw fields as well.
 *
 * AHCI: the checked-in generated/ahci/. Queue-device (NVMe-like): compiled at run time into a
 * temporary directory and imported from there.
 */

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import * as ahci from "../../generated/ahci/index.ts";
import type { CommandModel, CommandSetModel, DeviceModel, StructModel } from "../../generator/model.ts";
import {
  AHCI_SPEC,
  compileFile,
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
type Decoded = Readonly<Record<string, unknown>> & { readonly kind: string; readonly opcode: number };
type Request = { readonly lba?: number; readonly sectors?: number; readonly tag?: number };

const queueDir = tempDir("commands-queue");
afterAll(() => queueDir.remove());
const queueCompiled = compileFile(QUEUE_SPEC);
writeFiles(queueDir.path, queueCompiled.files);
const queueModule = await importFile<ModuleRecord>(`${queueDir.path}/index.ts`);

const devices: readonly { label: string; model: DeviceModel; module: ModuleRecord }[] = [
  { label: "ahci", model: modelOf(AHCI_SPEC), module: ahci as unknown as ModuleRecord },
  { label: "queue-device", model: queueCompiled.model!, module: queueModule },
];

/** Width in bits of a member or value of the command structure. */
function widthOf(struct: StructModel, name: string): number {
  const value = struct.values.find((v) => v.name === name);
  if (value) return value.width;
  const member = struct.members.find((m) => m.name === name);
  if (member?.kind === "scalar") return member.size * 8;
  throw new Error(`${struct.name} has no member or value ${name}`);
}

/** Reads a member or value of a decoded command structure, through the generated getter. */
function readRaw(module: ModuleRecord, struct: StructModel, command: Struct, name: string): number {
  if (struct.values.some((v) => v.name === name))
    return fn<(v: Struct) => number>(module, valueAccessorNames(struct.name, name).get)(command);
  return command[name] as number;
}

/** The sector counts a command can carry, and how each is held in the raw field. */
function countRange(
  c: CommandModel,
  width: number,
): { min: number; max: number; raw(sectors: number): number } {
  const count = c.count!;
  const add = count.add ?? 0;
  if (count.zeroMeans > 0)
    return { min: 1, max: count.zeroMeans, raw: (s) => (s === count.zeroMeans ? 0 : s - add) };
  return { min: add, max: 2 ** width - 1 + add, raw: (s) => s - add };
}

/** The sectors a raw count field means, from the spec's rules. */
function sectorsOf(c: CommandModel, raw: number): number {
  const count = c.count!;
  if (raw === 0 && count.zeroMeans > 0) return count.zeroMeans;
  return raw + (count.add ?? 0);
}

for (const { label, model, module } of devices) {
  const structs = new Map(model.structs.map((s) => [s.name, s]));

  describe(`${label}: command sets`, () => {
    it("the model has at least one command set", () => {
      expect(model.commandSets.length).toBeGreaterThan(0);
    });

    for (const set of model.commandSets) describeSet(set, structs.get(set.struct)!);
  });

  function describeSet(set: CommandSetModel, struct: StructModel): void {
    const T = pascal(set.name);
    const decodeCommand = fn<(c: Struct) => Decoded>(module, `decode${T}Command`);
    const encodeCommand = fn<(name: string, r?: Request) => Struct>(module, `encode${T}Command`);
    const decodeStruct = fn<(b: Uint8Array, o?: number) => Struct>(module, `decode${struct.name}`);
    const encodeStruct = fn<(v: Struct) => Uint8Array>(module, `encode${struct.name}`);
    const byOpcode = new Map(set.commands.map((c) => [c.opcode, c]));
    const opcodeWidth = widthOf(struct, set.member);
    const structBytes = fc.uint8Array({ minLength: struct.size, maxLength: struct.size });

    describe(`${set.name} on ${struct.name}.${set.member}`, () => {
      it(`${T}Opcode lists exactly the spec's commands`, () => {
        const table = module[`${T}Opcode`] as Record<string, number>;
        expect(table).toEqual(Object.fromEntries(set.commands.map((c) => [c.name, c.opcode])));
      });

      it(`every opcode 0..${2 ** Math.min(opcodeWidth, 8) - 1} decodes without throwing; unknown ones as "other"`, () => {
        for (let opcode = 0; opcode < 2 ** Math.min(opcodeWidth, 8); opcode++) {
          fc.assert(
            fc.property(structBytes, (bytes) => {
              const command = decodeStruct(bytes);
              command[set.member] = opcode;
              const decoded = decodeCommand(command);
              const known = byOpcode.get(opcode);
              if (known === undefined) {
                expect(decoded).toEqual({ kind: "other", opcode });
              } else {
                expect(decoded.kind).toBe(known.kind);
                expect(decoded.opcode).toBe(opcode);
                expect(decoded.name).toBe(known.name);
              }
            }),
            { numRuns: 10 },
          );
        }
      });

      for (const c of set.commands) {
        it(`${c.name} (0x${c.opcode.toString(16)}, ${c.kind}): encode then decode gives the request back`, () => {
          const lbaWidth = c.lba ? widthOf(struct, c.lba) : 0;
          const countWidth = c.count ? widthOf(struct, c.count.from) : 0;
          const range = c.count ? countRange(c, countWidth) : null;
          const tagWidth = c.tag ? widthOf(struct, c.tag) : 0;
          const request = fc.record({
            lba: lbaWidth
              ? fc.bigInt({ min: 0n, max: 2n ** BigInt(lbaWidth) - 1n }).map(Number)
              : fc.constant(0),
            sectors: range
              ? fc.oneof(
                  fc.integer({ min: range.min, max: range.max }),
                  fc.constantFrom(range.min, range.max, range.max - 1),
                )
              : fc.constant(0),
            tag: tagWidth ? fc.integer({ min: 0, max: 2 ** tagWidth - 1 }) : fc.constant(0),
          });
          fc.assert(
            fc.property(request, (r) => {
              const command = encodeCommand(c.name, r);
              // Through the bytes as well: what a device would read from memory.
              const again = decodeStruct(encodeStruct(command));
              expect(again).toEqual(command);
              expect(command[set.member]).toBe(c.opcode);
              for (const p of set.presets) {
                const member = struct.members.find((m) => m.name === p.member)!;
                const field =
                  member.kind === "scalar" ? member.fields.find((f) => f.name === p.field) : undefined;
                const raw = command[p.member] as number;
                expect(field ? (raw & field.mask) >>> field.lsb : raw, `preset ${p.member}.${p.field}`).toBe(
                  p.value,
                );
              }

              const decoded = decodeCommand(again);
              expect(decoded.kind).toBe(c.kind);
              expect(decoded.name).toBe(c.name);
              expect(decoded.opcode).toBe(c.opcode);
              switch (c.kind) {
                case "read":
                case "write":
                  expect(decoded.lba).toBe(c.lba ? r.lba : 0);
                  expect(decoded.queued).toBe(c.queued);
                  expect(decoded.tag).toBe(c.tag ? r.tag : null);
                  expect(decoded.dma).toBe(c.transfer === "dma");
                  if (c.count) {
                    expect(decoded.sectors).toBe(r.sectors);
                    expect(readRaw(module, struct, again, c.count.from), "raw count").toBe(
                      range!.raw(r.sectors),
                    );
                  }
                  if (c.lba) expect(readRaw(module, struct, again, c.lba)).toBe(r.lba);
                  break;
                case "trim":
                  expect(decoded.blocks).toBe(r.sectors);
                  expect(decoded.dma).toBe(c.transfer === "dma");
                  break;
                case "data_in":
                  expect(decoded).toEqual({
                    kind: "data_in",
                    name: c.name,
                    opcode: c.opcode,
                    bytes: c.bytes,
                    dma: c.transfer === "dma",
                  });
                  break;
                case "flush":
                case "nondata":
                  expect(decoded).toEqual({ kind: c.kind, name: c.name, opcode: c.opcode });
                  break;
              }
            }),
          );
        });

        if (c.count) {
          it(`${c.name}: a raw count decodes by the spec's rule (zero ${c.count.zeroMeans}, add ${c.count.add ?? 0})`, () => {
            const width = widthOf(struct, c.count!.from);
            fc.assert(
              fc.property(structBytes, fc.integer({ min: 0, max: 2 ** width - 1 }), (bytes, raw) => {
                const command = decodeStruct(bytes);
                command[set.member] = c.opcode;
                const setter = struct.values.some((v) => v.name === c.count!.from)
                  ? fn<(v: Struct, n: number) => void>(
                      module,
                      valueAccessorNames(struct.name, c.count!.from).set,
                    )
                  : (v: Struct, n: number) => {
                      v[c.count!.from] = n;
                    };
                setter(command, raw);
                const decoded = decodeCommand(command);
                expect(c.kind === "trim" ? decoded.blocks : decoded.sectors).toBe(sectorsOf(c, raw));
              }),
            );
          });
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// AHCI by hand (ATA8-ACS opcodes, SATA register FIS layout).

describe("ahci: ATA commands by hand", () => {
  const fis = (name: ahci.AtaCommandName, request: Request) =>
    Array.from(ahci.encodeRegH2DFis(ahci.encodeAtaCommand(name, request)));

  it("names the ATA8-ACS opcodes", () => {
    expect(ahci.AtaOpcode).toMatchObject({
      READ_DMA_EXT: 0x25,
      WRITE_DMA_EXT: 0x35,
      READ_DMA: 0xc8,
      WRITE_DMA: 0xca,
      READ_FPDMA_QUEUED: 0x60,
      WRITE_FPDMA_QUEUED: 0x61,
      FLUSH_CACHE_EXT: 0xea,
      IDENTIFY_DEVICE: 0xec,
    });
  });

  it("READ DMA EXT of 65536 sectors: count 0, LBA low byte first, C and LBA mode set", () => {
    expect(fis("READ_DMA_EXT", { lba: 0x123456789abc, sectors: 65536 })).toEqual([
      0x27, 0x80, 0x25, 0x00, 0xbc, 0x9a, 0x78, 0x40, 0x56, 0x34, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0, 0, 0,
      0,
    ]);
    const decoded = ahci.decodeAtaCommand(ahci.encodeAtaCommand("READ_DMA_EXT", { lba: 1, sectors: 65536 }));
    expect(decoded).toEqual({
      kind: "read",
      name: "READ_DMA_EXT",
      opcode: 0x25,
      lba: 1,
      sectors: 65536,
      dma: true,
      queued: false,
      tag: null,
    });
  });

  it("WRITE DMA (28-bit) of 256 sectors: count 0, LBA bits 27:24 in DEVICE[3:0]", () => {
    expect(fis("WRITE_DMA", { lba: 0xabcdef1, sectors: 256 }).slice(0, 14)).toEqual([
      0x27, 0x80, 0xca, 0x00, 0xf1, 0xde, 0xbc, 0x4a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ]);
    expect(ahci.decodeAtaCommand(ahci.encodeAtaCommand("WRITE_DMA", { lba: 7, sectors: 256 }))).toMatchObject(
      {
        sectors: 256,
        lba: 7,
      },
    );
  });

  it("READ FPDMA QUEUED: count in FEATURES, tag in COUNT[7:3]", () => {
    const bytes = fis("READ_FPDMA_QUEUED", { lba: 0x10, sectors: 8, tag: 5 });
    expect([bytes[3], bytes[11], bytes[12], bytes[13]]).toEqual([8, 0, 5 << 3, 0]);
    expect(ahci.decodeAtaCommand(ahci.decodeRegH2DFis(new Uint8Array(bytes)))).toEqual({
      kind: "read",
      name: "READ_FPDMA_QUEUED",
      opcode: 0x60,
      lba: 0x10,
      sectors: 8,
      dma: true,
      queued: true,
      tag: 5,
    });
  });

  it("28-bit commands are READ/WRITE SECTORS and READ/WRITE DMA; the others 48-bit", () => {
    const model = modelOf(AHCI_SPEC);
    const lba28 = model.commandSets[0]!.commands.filter((c) => c.lba === "LBA28").map((c) => c.name);
    expect(lba28.sort()).toEqual(["READ_DMA", "READ_SECTORS", "WRITE_DMA", "WRITE_SECTORS"]);
    for (const c of model.commandSets[0]!.commands.filter((x) => x.count))
      expect(c.count!.zeroMeans, c.name).toBe(c.count!.from === "COUNT" ? 256 : 65536);
  });

  it("an opcode the spec does not name is 'other', whatever else the FIS holds", () => {
    const command = ahci.decodeRegH2DFis(new Uint8Array(20).fill(0xff));
    command.COMMAND = 0x42;
    expect(ahci.decodeAtaCommand(command)).toEqual({ kind: "other", opcode: 0x42 });
  });
});

// ---------------------------------------------------------------------------------------------
// Queue-device by hand: NVMe's NLB is 0-based (`count NLB + 1`).

describe("queue-device: a 0-based block count (count NLB + 1)", () => {
  const encode = fn<(name: string, r?: Request) => Struct>(queueModule, "encodeNvmCommand");
  const decode = fn<(c: Struct) => Decoded>(queueModule, "decodeNvmCommand");

  it("a READ of 1 block has NLB 0 and decodes as 1 block", () => {
    const command = encode("READ", { lba: 100, sectors: 1 });
    expect((command.CDW12 as number) & 0xffff).toBe(0);
    expect(decode(command)).toMatchObject({ kind: "read", lba: 100, sectors: 1 });
  });

  it("a WRITE of 65536 blocks has NLB 0xFFFF", () => {
    const command = encode("WRITE", { lba: 0, sectors: 65536 });
    expect((command.CDW12 as number) & 0xffff).toBe(0xffff);
    expect(decode(command)).toMatchObject({ kind: "write", sectors: 65536 });
  });
});
