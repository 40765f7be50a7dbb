/** Fast checks of the v86 platform's and guest builder's pure parts (no emulator, no apt). */
import { describe, expect, it } from "vitest";
import { makeMbr } from "../../runtime/guest/linux/build.ts";
import { writeCpio } from "../../runtime/guest/linux/cpio.ts";
import { type ModInfo, moduleLoadOrder, readModInfo } from "../../runtime/guest/linux/modinfo.ts";
import { buildPciConfigSpace, linuxCmdline } from "../../runtime/platform/v86/machine.ts";
import { bootPhases } from "../../runtime/platform/v86/phases.ts";
import type { PciMmioDevice } from "../../runtime/platform/v86/types.ts";
import { FakeAhci } from "./fake-ahci.ts";

describe("PCI config space", () => {
  it("describes an AHCI function with BAR5 and INTA", () => {
    const s = buildPciConfigSpace(new FakeAhci());
    const dv = new DataView(s.buffer);
    expect(s.length).toBe(256);
    expect(dv.getUint16(0x00, true)).toBe(0x8086);
    expect(dv.getUint16(0x02, true)).toBe(0x2922);
    expect(dv.getUint16(0x04, true)).toBe(0x0006);
    expect([s[0x09], s[0x0a], s[0x0b]]).toEqual([0x01, 0x06, 0x01]);
    expect(dv.getUint32(0x24, true)).toBe(0xfe800000);
    for (const bar of [0x10, 0x14, 0x18, 0x1c, 0x20]) expect(dv.getUint32(bar, true)).toBe(0);
    expect(s[0x3d]).toBe(1);
  });

  it("rejects a BAR that is not a power of two or not aligned", () => {
    const dev = new FakeAhci();
    const variant = (patch: Partial<PciMmioDevice>): PciMmioDevice => ({
      pciId: dev.pciId,
      vendorId: dev.vendorId,
      deviceId: dev.deviceId,
      classCode: dev.classCode,
      barIndex: dev.barIndex,
      barBase: dev.barBase,
      barSize: dev.barSize,
      mmioRead: () => 0,
      mmioWrite: () => {},
      attach: () => {},
      ...patch,
    });
    expect(() => buildPciConfigSpace(variant({}))).not.toThrow();
    expect(() => buildPciConfigSpace(variant({ barSize: 0x3000 }))).toThrow(RangeError);
    expect(() => buildPciConfigSpace(variant({ barBase: 0xfe801000 }))).toThrow(RangeError);
  });
});

describe("fake AHCI registers", () => {
  it("composes byte reads and keeps GHC.AE", () => {
    const d = new FakeAhci();
    expect(d.mmioRead(0x10, 4)).toBe(0x10301);
    expect(d.mmioRead(0x11, 1)).toBe(0x03);
    expect(d.mmioRead(0x12, 2)).toBe(0x0001);
    d.mmioWrite(0x04, 4, 0x1);
    expect(d.mmioRead(0x04, 4)).toBe(0x80000000);
    d.mmioWrite(0x04, 1, 0x2);
    expect(d.mmioRead(0x04, 4)).toBe(0x80000002);
  });
});

describe("newc cpio", () => {
  it("writes headers, names, data and the trailer with 4-byte alignment", () => {
    const a = writeCpio([
      { kind: "dir", path: "bin" },
      { kind: "file", path: "/init", data: new TextEncoder().encode("#!x\n"), mode: 0o755 },
      { kind: "chardev", path: "dev/console", major: 5, minor: 1 },
    ]);
    const text = new TextDecoder("latin1").decode(a);
    expect(a.length % 512).toBe(0);
    expect(text.startsWith("070701")).toBe(true);
    const entries: { name: string; mode: number; size: number; rdev: [number, number] }[] = [];
    let off = 0;
    for (;;) {
      const h = text.slice(off, off + 110);
      const field = (i: number): number => Number.parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
      const nameSize = field(11);
      const name = text.slice(off + 110, off + 110 + nameSize - 1);
      const size = field(6);
      entries.push({ name, mode: field(1), size, rdev: [field(9), field(10)] });
      off += 110 + nameSize;
      off += (4 - (off % 4)) % 4;
      off += size;
      off += (4 - (off % 4)) % 4;
      if (name === "TRAILER!!!") break;
    }
    expect(entries.map((e) => e.name)).toEqual(["bin", "init", "dev/console", "TRAILER!!!"]);
    expect(entries[1]!.mode).toBe(0o100755);
    expect(entries[1]!.size).toBe(4);
    expect(entries[2]!.mode).toBe(0o020600);
    expect(entries[2]!.rdev).toEqual([5, 1]);
  });
});

describe("MBR", () => {
  it("has one Linux partition at LBA 2048", () => {
    const m = makeMbr(2048, 129024, 0x83);
    const dv = new DataView(m.buffer);
    expect(m[450]).toBe(0x83);
    expect(dv.getUint32(454, true)).toBe(2048);
    expect(dv.getUint32(458, true)).toBe(129024);
    expect([m[510], m[511]]).toEqual([0x55, 0xaa]);
    expect([m[447], m[448], m[449]]).toEqual([32, 33, 0]); // CHS of LBA 2048 with 255/63
  });
});

describe("module dependencies", () => {
  function elf32WithModinfo(modinfo: string): Uint8Array {
    // ELF header + section data + 3 section headers (null, .shstrtab, .modinfo).
    const enc = new TextEncoder();
    const shstr = enc.encode("\0.shstrtab\0.modinfo\0");
    const info = enc.encode(modinfo);
    const dataOff = 0x34;
    const infoOff = dataOff + shstr.length;
    const shoff = (infoOff + info.length + 3) & ~3;
    const out = new Uint8Array(shoff + 3 * 40);
    const dv = new DataView(out.buffer);
    out.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1], 0);
    dv.setUint32(0x20, shoff, true);
    dv.setUint16(0x2e, 40, true);
    dv.setUint16(0x30, 3, true);
    dv.setUint16(0x32, 1, true);
    out.set(shstr, dataOff);
    out.set(info, infoOff);
    const sh = (i: number, name: number, off: number, size: number): void => {
      dv.setUint32(shoff + i * 40, name, true);
      dv.setUint32(shoff + i * 40 + 16, off, true);
      dv.setUint32(shoff + i * 40 + 20, size, true);
    };
    sh(1, 1, dataOff, shstr.length);
    sh(2, 11, infoOff, info.length);
    return out;
  }

  it("reads depends= and softdep= from .modinfo", () => {
    const info = readModInfo(
      elf32WithModinfo("license=GPL\0softdep=pre: crc32c\0depends=mbcache,jbd2,crc16\0name=ext4\0"),
    );
    expect(info.name).toBe("ext4");
    expect(info.depends).toEqual(["mbcache", "jbd2", "crc16"]);
    expect(info.softPre).toEqual(["crc32c"]);
  });

  it("orders the closure with dependencies first", () => {
    const mods: Record<string, ModInfo> = {
      ahci: { depends: ["libahci", "libata"], softPre: [], fields: new Map() },
      libahci: { depends: ["libata"], softPre: [], fields: new Map() },
      libata: { depends: ["scsi_mod"], softPre: [], fields: new Map() },
      scsi_mod: { depends: ["scsi_common"], softPre: [], fields: new Map() },
      scsi_common: { depends: [], softPre: [], fields: new Map() },
      ext4: { depends: ["crc16"], softPre: ["crc32c"], fields: new Map() },
    };
    const { order, missing } = moduleLoadOrder(["ahci", "ext4"], (n) => mods[n]);
    expect(order).toEqual(["scsi_common", "scsi_mod", "libata", "libahci", "ahci", "ext4"]);
    expect(missing).toEqual(["crc16"]);
  });
});

describe("kernel command line and phases", () => {
  it("uses the serial console and passes the root wait", () => {
    const c = linuxCmdline({ rootwait: 3, extra: ["foo"] });
    expect(c).toContain("console=ttyS0");
    expect(c).toContain("medic.rootwait=3");
    expect(c.endsWith("foo")).toBe(true);
  });

  it("reads milestones off the console", () => {
    const p = bootPhases([
      { text: "Probing EDD (edd=off to disable)... ok", tMs: 1500 },
      { text: "[    0.000000] Linux version 6.1.0", tMs: 9000 },
      { text: "[   10.500000] Run /init as init process", tMs: 20000 },
      { text: "MEDIC-INITRAMFS start t=10.6", tMs: 20100 },
      { text: "MEDIC-GUEST-ERROR checksum /data/x: FAILED", tMs: 30000 },
    ]);
    expect(p.setupMs).toBe(1500);
    expect(p.kernelMs).toBe(9000);
    expect(p.initMs).toBe(20000);
    expect(p.initramfsStartMs).toBe(20100);
    expect(p.errors).toHaveLength(1);
  });
});
