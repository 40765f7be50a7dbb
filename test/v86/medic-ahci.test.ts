/**
 * medic's AHCI controller as v86's PCI function, without the emulator: a fake platform (RAM in a
 * Uint8Array, an interrupt line) stands in for v86, and medic's own guest driver drives the device
 * through the PCI function's MMIO entry points, as v86's handlers would.
 */
import { describe, expect, it } from "vitest";
import { DEVICE } from "../../generated/ahci/index.ts";
import { fillLbaPattern, MemoryBackend } from "../../runtime/block/index.ts";
import { SECTOR_SIZE } from "../../runtime/block/types.ts";
import { AhciGuestDriver, type GuestPlatform } from "../../runtime/guest/driver.ts";
import { verifyDisk } from "../../runtime/platform/v86/linux-deploy.ts";
import { buildPciConfigSpace } from "../../runtime/platform/v86/machine.ts";
import {
  AHCI_BAR_BASE,
  AHCI_BAR_SIZE,
  MedicAhci,
  V86PhysicalMemory,
  vmmLayout,
} from "../../runtime/platform/v86/medic-ahci.ts";
import type { PciPlatform } from "../../runtime/platform/v86/types.ts";
import { RealClock } from "../../runtime/vmx/clock.ts";
import { MemoryError } from "../../runtime/vmx/memory.ts";

const MiB = 1024 * 1024;

class FakePlatform implements PciPlatform {
  readonly ram: Uint8Array;
  level = false;
  raises = 0;
  dmaWrites = 0;
  constructor(readonly ramBytes: number) {
    this.ram = new Uint8Array(ramBytes);
  }
  dmaRead(addr: number, len: number): Uint8Array {
    if (addr < 0 || addr + len > this.ramBytes) throw new RangeError("DMA outside RAM");
    return this.ram.slice(addr, addr + len);
  }
  dmaWrite(addr: number, data: Uint8Array): void {
    if (addr < 0 || addr + data.length > this.ramBytes) throw new RangeError("DMA outside RAM");
    this.dmaWrites++;
    this.ram.set(data, addr);
  }
  setIrq(level: boolean): void {
    if (level && !this.level) this.raises++;
    this.level = level;
  }
}

/** The guest's view: the PCI function's BAR, RAM below the VMM's range, the platform's line. */
function guestPlatform(dev: MedicAhci, platform: FakePlatform): GuestPlatform {
  const listeners = new Set<(level: boolean) => void>();
  const setIrq = platform.setIrq.bind(platform);
  platform.setIrq = (level) => {
    setIrq(level);
    for (const l of listeners) l(level);
  };
  const vmm = dev.options.vmmRegion;
  return {
    memory: dev.memory,
    abar: dev.barBase,
    guestRamBytes: vmm ? vmm.base : platform.ramBytes,
    clock: new RealClock(),
    mmioRead: (addr, size) => dev.mmioRead(addr - dev.barBase, size),
    mmioWrite: (addr, size, value) => dev.mmioWrite(addr - dev.barBase, size, value),
    get irqPending() {
      return platform.level;
    },
    host: {
      onGuestIrq(listener) {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    },
  };
}

describe("the VMM's memory in v86's RAM", () => {
  it("ends 1 MiB below the top, inside what SeaBIOS reserves, and is hidden from Linux with memmap=", () => {
    const layout = vmmLayout(256 * MiB);
    expect(layout.region).toEqual({ base: 240 * MiB, length: 15 * MiB, type: "reserved" });
    expect(layout.cmdline).toBe("memmap=0xf00000$0xf000000");
    expect(() => vmmLayout(64 * MiB)).toThrow(RangeError);
  });

  it("maps guest RAM around the VMM's range and checks every access", () => {
    const platform = new FakePlatform(8 * MiB);
    const memory = new V86PhysicalMemory(platform, { base: 4 * MiB, length: 2 * MiB, type: "reserved" });
    expect(memory.regions.map((r) => [r.base / MiB, r.length / MiB, r.type])).toEqual([
      [0, 4, "ram"],
      [4, 2, "reserved"],
      [6, 2, "ram"],
    ]);
    expect(memory.isGuestRange(4 * MiB - 4, 4)).toBe(true);
    expect(memory.isGuestRange(4 * MiB - 4, 8)).toBe(false);
    expect(memory.isGuestRange(5 * MiB, 4)).toBe(false);
    expect(memory.isGuestRange(6 * MiB, 4)).toBe(true);
    expect(memory.isPhysicalRange(5 * MiB, 4)).toBe(true);
    memory.writeU32(0x1000, 0xdeadbeef);
    memory.writeU64(0x2000, 0x0123456789abcdefn);
    memory.writeU16(0x3000, 0xbeef);
    memory.fill(0x4000, 16, 0xaa);
    expect(memory.readU32(0x1000)).toBe(0xdeadbeef);
    expect(memory.readU8(0x1000)).toBe(0xef);
    expect(memory.readU64(0x2000)).toBe(0x0123456789abcdefn);
    expect(memory.readU16(0x3000)).toBe(0xbeef);
    expect([...memory.read(0x4000, 17)]).toEqual([...new Array(16).fill(0xaa), 0]);
    const into = new Uint8Array(4);
    memory.readInto(0x1000, into);
    expect([...into]).toEqual([0xef, 0xbe, 0xad, 0xde]);
    expect(() => memory.read(8 * MiB - 2, 4)).toThrow(MemoryError);
    expect(() => memory.write(-1, new Uint8Array(1))).toThrow(MemoryError);
  });
});

describe("MedicAhci, the PCI function", () => {
  it("is an AHCI function (8086:2922, class 0x010601) with its ABAR in BAR5", () => {
    const dev = new MedicAhci({ disks: [new MemoryBackend(2048)], mediated: false });
    expect(AHCI_BAR_SIZE).toBe(0x2000);
    expect(AHCI_BAR_SIZE).toBeGreaterThanOrEqual(DEVICE.barSize);
    const s = buildPciConfigSpace(dev);
    const dv = new DataView(s.buffer);
    expect(dv.getUint16(0, true)).toBe(0x8086);
    expect(dv.getUint16(2, true)).toBe(0x2922);
    expect([s[0x09], s[0x0a], s[0x0b]]).toEqual([0x01, 0x06, 0x01]);
    expect(dv.getUint32(0x24, true)).toBe(AHCI_BAR_BASE);
    expect(() => dev.machine).toThrow(/not plugged/);
  });

  for (const mediated of [false, true]) {
    it(`serves medic's guest driver through its MMIO entry points (${mediated ? "mediated" : "bare"})`, async () => {
      const platform = new FakePlatform(8 * MiB);
      const vmmRegion = { base: 6 * MiB, length: 2 * MiB, type: "reserved" } as const;
      const disk = new MemoryBackend(4096);
      fillLbaPattern(disk.bytes, 0);
      const dev = new MedicAhci({ disks: [disk], mediated, vmmRegion });
      let seen: unknown;
      const dev2 = new MedicAhci({ disks: [disk], mediated, vmmRegion, onMachine: (m) => (seen = m) });
      dev2.attach(new FakePlatform(8 * MiB));
      expect(seen).toBe(dev2.machine);
      dev.attach(platform);
      expect(() => dev.attach(platform)).toThrow(/already/);
      // Past the register window, inside the BAR: reserved, reads as zero, writes are dropped.
      expect(dev.mmioRead(DEVICE.barSize, 4)).toBe(0);
      dev.mmioWrite(AHCI_BAR_SIZE - 4, 4, 0xffffffff);
      expect(dev.mmioRead(0x10, 4)).toBe(0x00010301); // VS 1.3.1
      expect(dev.mmioRead(0x12, 2)).toBe(0x0001);

      const driver = await AhciGuestDriver.open(guestPlatform(dev, platform), { memoryEnd: 6 * MiB });
      const data = await driver.read(100, 16);
      const expected = new Uint8Array(16 * SECTOR_SIZE);
      fillLbaPattern(expected, 100);
      expect(Buffer.compare(data, expected)).toBe(0);
      const payload = new Uint8Array(8 * SECTOR_SIZE).fill(0x5a);
      await driver.write(2000, payload);
      expect(Buffer.compare(disk.bytes.subarray(2000 * SECTOR_SIZE, 2008 * SECTOR_SIZE), payload)).toBe(0);
      await driver.close();
      expect(platform.raises).toBeGreaterThan(0);
      expect(platform.dmaWrites).toBeGreaterThan(0);
      const host = dev.machine.host;
      if (mediated) {
        expect(host.stats.exitsByReason["ept-violation"]).toBeGreaterThan(0);
        expect(host.stats.directAccesses).toBe(0);
        expect(dev.machine.mediator!.counters.guestCommands).toBeGreaterThan(0);
      } else {
        expect(host.stats.exitsByReason["ept-violation"]).toBe(0);
        expect(host.stats.directAccesses).toBeGreaterThan(0);
      }
    });
  }

  it("refuses to be mediated without VMM memory", () => {
    expect(() => new MedicAhci({ disks: [new MemoryBackend(8)], mediated: true })).toThrow(/VMM/);
  });
});

describe("verifyDisk", () => {
  it("compares with the image, with what the mediator saw, and skips what no VMM saw", async () => {
    const image = new MemoryBackend(64);
    fillLbaPattern(image.bytes, 0);
    const disk = new MemoryBackend(64);
    disk.bytes.set(image.bytes);
    const known = new Uint8Array(SECTOR_SIZE).fill(1);
    disk.bytes.set(known, 10 * SECTOR_SIZE);
    disk.bytes.fill(2, 20 * SECTOR_SIZE, 22 * SECTOR_SIZE);
    const mediatedWrites = new Map([[10, known]]);
    const directWrites = new Set([20, 21]);
    const ok = await verifyDisk(image, disk, { mediatedWrites, directWrites });
    expect(ok).toEqual({
      image_sectors: 61,
      guest_sectors_known: 1,
      guest_sectors_unknown: 2,
      bad_sectors: [],
    });
    disk.bytes[30 * SECTOR_SIZE + 7]! ^= 1;
    disk.bytes[10 * SECTOR_SIZE]! ^= 1;
    const bad = await verifyDisk(image, disk, { mediatedWrites, directWrites });
    expect(bad.bad_sectors).toEqual([10, 30]);
  });
});
