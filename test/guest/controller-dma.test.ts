/**
 * The controller's data paths, driven register by register: a read lands in guest RAM the same
 * way whether the disk reads straight into a live view of RAM (one PRD entry, readInto and
 * liveView available), through the reusable staging buffer (several PRD entries), or through
 * fresh copies (a memory without liveView, a disk without readInto); on any clock.
 */
import { describe, expect, it } from "vitest";
import {
  type AtaCommandName,
  COMMAND_HEADER_DW0_CFL_SHIFT,
  COMMAND_HEADER_DW0_PRDTL_SHIFT,
  COMMAND_HEADER_DW0_W,
  COMMAND_HEADER_PRDBC,
  COMMAND_HEADER_SIZE,
  COMMAND_TABLE_PRDT,
  decodeRegD2HFis,
  decodeSetDeviceBitsFis,
  emptyCommandHeader,
  emptyPrdEntry,
  encodeAtaCommand,
  encodeCommandHeader,
  encodePrdEntry,
  encodeRegH2DFis,
  PORT_CI,
  PORT_CLB,
  PORT_CMD,
  PORT_CMD_FRE,
  PORT_CMD_ST,
  PORT_FB,
  PORT_IS,
  PORT_IS_DHRS,
  PORT_IS_HBFS,
  PORT_IS_SDBS,
  PORT_SACT,
  PRD_ENTRY_SIZE,
  portOffset,
  RECEIVED_FIS_RFIS,
  RECEIVED_FIS_SDBFIS,
  REG_H2D_FIS_SIZE,
} from "../../generated/ahci/index.ts";
import { checkLbaPattern, fillLbaPattern, MemoryBackend } from "../../runtime/block/index.ts";
import type { BlockBackend } from "../../runtime/block/types.ts";
import { AhciController, type DmaMemory } from "../../runtime/devices/ahci/controller.ts";
import { type Clock, RealClock, VirtualClock } from "../../runtime/vmx/clock.ts";
import { GuestMemory } from "../../runtime/vmx/memory.ts";

const SECTORS = 512;
const COMMAND_LIST = 0x1000;
const FIS_AREA = 0x2000;
const TABLES = 0x4000;
const TABLE_STRIDE = 0x400;

interface Variant {
  readonly name: string;
  /** Hide GuestMemory.liveView: every DMA goes through read/write copies. */
  readonly liveView: boolean;
  /** Hide MemoryBackend.readInto: every read allocates. */
  readonly readInto: boolean;
  readonly clock: () => Clock;
}

const VARIANTS: Variant[] = [
  { name: "live view + readInto, real clock", liveView: true, readInto: true, clock: () => new RealClock() },
  {
    name: "live view + readInto, virtual clock",
    liveView: true,
    readInto: true,
    clock: () => new VirtualClock(),
  },
  { name: "copies, readInto", liveView: false, readInto: true, clock: () => new RealClock() },
  { name: "live view, no readInto", liveView: true, readInto: false, clock: () => new RealClock() },
  { name: "copies only", liveView: false, readInto: false, clock: () => new RealClock() },
];

/** Only what DmaMemory requires: no liveView. */
function copyingMemory(memory: GuestMemory): DmaMemory {
  return {
    isPhysicalRange: (address, length) => memory.isPhysicalRange(address, length),
    read: (address, length) => memory.read(address, length),
    write: (address, data) => memory.write(address, data),
  };
}

/** Only what BlockBackend requires: no readInto. */
function plainDisk(disk: MemoryBackend): BlockBackend {
  return {
    sectors: disk.sectors,
    description: disk.description,
    read: (lba, count) => disk.read(lba, count),
    write: (lba, data) => disk.write(lba, data),
    flush: () => disk.flush(),
    close: () => disk.close(),
  };
}

/** A controller with one pattern disk, its port started with FIS reception on. */
function setup(variant: Variant) {
  const memory = new GuestMemory({ ramBytes: 1 << 20 });
  const disk = new MemoryBackend(SECTORS);
  fillLbaPattern(disk.bytes, 0);
  const controller = new AhciController({
    disks: [variant.readInto ? disk : plainDisk(disk)],
    memory: variant.liveView ? memory : copyingMemory(memory),
    clock: variant.clock(),
  });
  const port = (register: number) => portOffset(0, register);
  controller.write(port(PORT_CLB), 4, COMMAND_LIST);
  controller.write(port(PORT_FB), 4, FIS_AREA);
  controller.write(port(PORT_CMD), 4, PORT_CMD_FRE);
  controller.write(port(PORT_CMD), 4, PORT_CMD_FRE | PORT_CMD_ST);
  controller.write(port(PORT_IS), 4, 0xffffffff);

  /** Builds `name` in `slot` with a PRDT of `regions`, and rings PxSACT (if queued) and PxCI. */
  const issue = (
    slot: number,
    name: AtaCommandName,
    lba: number,
    sectors: number,
    regions: readonly { address: number; length: number }[],
  ): void => {
    const table = TABLES + slot * TABLE_STRIDE;
    memory.write(table, encodeRegH2DFis(encodeAtaCommand(name, { lba, sectors, tag: slot })));
    regions.forEach((region, i) => {
      const prd = emptyPrdEntry();
      prd.DBA = region.address;
      prd.DW3 = region.length - 1;
      memory.write(table + COMMAND_TABLE_PRDT + i * PRD_ENTRY_SIZE, encodePrdEntry(prd));
    });
    const header = emptyCommandHeader();
    header.DW0 =
      ((REG_H2D_FIS_SIZE / 4) << COMMAND_HEADER_DW0_CFL_SHIFT) |
      (name.startsWith("WRITE") ? COMMAND_HEADER_DW0_W : 0) |
      (regions.length << COMMAND_HEADER_DW0_PRDTL_SHIFT);
    header.PRDBC = 0xdeadbeef; // the HBA must overwrite it
    header.CTBA = table;
    memory.write(COMMAND_LIST + slot * COMMAND_HEADER_SIZE, encodeCommandHeader(header));
    if (name.endsWith("QUEUED")) controller.write(port(PORT_SACT), 4, 1 << slot);
    controller.write(port(PORT_CI), 4, 1 << slot);
  };

  /** The bytes of `regions`, concatenated. */
  const gathered = (regions: readonly { address: number; length: number }[]): Uint8Array => {
    const out = new Uint8Array(regions.reduce((n, r) => n + r.length, 0));
    let at = 0;
    for (const r of regions) {
      out.set(memory.read(r.address, r.length), at);
      at += r.length;
    }
    return out;
  };
  const prdbc = (slot: number) =>
    memory.readU32(COMMAND_LIST + slot * COMMAND_HEADER_SIZE + COMMAND_HEADER_PRDBC);
  return { memory, disk, controller, port, issue, gathered, prdbc };
}

/** Scattered, even-sized PRD entries that do not fall on sector boundaries. */
const SCATTERED = [
  { address: 0x20000, length: 1000 },
  { address: 0x30002, length: 2 },
  { address: 0x40000, length: 3606 },
];

describe.each(VARIANTS)("controller DMA ($name)", (variant) => {
  it("reads into one PRD entry and into scattered ones, the same bytes", async () => {
    const { memory, controller, port, issue, gathered, prdbc } = setup(variant);
    const one = [{ address: 0x10000, length: 9 * 512 }];
    issue(0, "READ_DMA_EXT", 17, 9, one);
    await controller.idle();
    expect(checkLbaPattern(gathered(one), 17)).toBe(-1);
    expect(prdbc(0)).toBe(9 * 512);
    expect(controller.registers.get(port(PORT_CI))).toBe(0);
    expect(controller.registers.get(port(PORT_IS)) & PORT_IS_DHRS).toBe(PORT_IS_DHRS);
    const d2h = decodeRegD2HFis(memory.read(FIS_AREA + RECEIVED_FIS_RFIS, 20));
    expect(d2h.STATUS).toBe(0x50);

    issue(1, "READ_DMA_EXT", 100, 9, SCATTERED);
    await controller.idle();
    expect(checkLbaPattern(gathered(SCATTERED), 100)).toBe(-1);
    expect(prdbc(1)).toBe(9 * 512);
    // The byte after the 2-byte entry is not touched.
    expect(memory.readU8(0x30004)).toBe(0);
    expect(controller.stats.bytesRead).toBe(18 * 512);
  });

  it("completes 32 queued reads, each in its own buffer, with a Set Device Bits FIS", async () => {
    const { memory, controller, port, issue, gathered } = setup(variant);
    const buffers = Array.from({ length: 32 }, (_, tag) => [
      { address: 0x10000 + tag * 0x2000, length: 8 * 512 },
    ]);
    for (let round = 0; round < 3; round++) {
      for (let tag = 0; tag < 32; tag++) issue(tag, "READ_FPDMA_QUEUED", tag * 8 + round, 8, buffers[tag]!);
      await controller.idle();
      for (let tag = 0; tag < 32; tag++)
        expect(checkLbaPattern(gathered(buffers[tag]!), tag * 8 + round)).toBe(-1);
      expect(controller.registers.get(port(PORT_SACT))).toBe(0);
      expect(controller.registers.get(port(PORT_CI))).toBe(0);
    }
    expect(controller.registers.get(port(PORT_IS)) & PORT_IS_SDBS).toBe(PORT_IS_SDBS);
    const sdb = decodeSetDeviceBitsFis(memory.read(FIS_AREA + RECEIVED_FIS_SDBFIS, 8));
    expect(sdb.ACTIVE).toBe((1 << 31) >>> 0); // the last tag to complete
    expect(controller.stats.commands).toBe(96);
  });

  it("writes from scattered PRD entries", async () => {
    const { memory, disk, controller, issue, prdbc } = setup(variant);
    const data = new Uint8Array(9 * 512).map((_, i) => (i * 7 + 3) & 0xff);
    let at = 0;
    for (const r of SCATTERED) {
      memory.write(r.address, data.subarray(at, at + r.length));
      at += r.length;
    }
    issue(2, "WRITE_DMA_EXT", 40, 9, SCATTERED);
    await controller.idle();
    expect(disk.bytes.subarray(40 * 512, 49 * 512)).toEqual(data);
    expect(prdbc(2)).toBe(9 * 512);
  });

  it("stops with a host bus error when a PRD entry lies outside RAM, before any data lands", async () => {
    const { memory, controller, port, issue } = setup(variant);
    issue(0, "READ_DMA_EXT", 0, 8, [{ address: (1 << 20) - 1024, length: 8 * 512 }]);
    await controller.idle();
    expect(controller.registers.get(port(PORT_IS)) & PORT_IS_HBFS).toBe(PORT_IS_HBFS);
    expect(memory.read((1 << 20) - 1024, 1024)).toEqual(new Uint8Array(1024));
    expect(controller.stats.errors).toBe(1);
  });
});
