/**
 * Boots Debian 12's unmodified i386 kernel in v86 with medic-provided PCI devices.
 *
 * 1. The fake AHCI controller (no ports): SeaBIOS and Linux's ahci driver must probe it through our
 *    config space and MMIO window; the initramfs must run, find no root disk and power off.
 * 2. The same guest, with the root disk on v86's own IDE controller instead: proves the root file
 *    system's /sbin/init (read + checksum, write + sync + re-read, marker, power off) before a medic
 *    AHCI controller serves the disk.
 *
 * Needs (Debian 12, as root): `apt-get install seabios e2fsprogs` and the i386 architecture, which the
 * builder adds itself. Set MEDIC_SKIP_V86=1 to skip. Assets are cached in .cache/guest*.
 */
import { existsSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { buildGuest, type GuestAssets } from "../../runtime/guest/linux/build.ts";
import { linuxCmdline, SEABIOS_BIOS, startV86Machine } from "../../runtime/platform/v86/machine.ts";
import { bootPhases, formatBootPhases } from "../../runtime/platform/v86/phases.ts";
import { FakeAhci } from "./fake-ahci.ts";

const skip = process.env.MEDIC_SKIP_V86 === "1";
const BOOT_TIMEOUT_MS = 240_000;

function checkPrerequisites(): void {
  const missing: string[] = [];
  if (!existsSync(SEABIOS_BIOS)) missing.push(`${SEABIOS_BIOS} (apt-get install seabios)`);
  if (!existsSync("/usr/sbin/mke2fs") && !existsSync("/sbin/mke2fs"))
    missing.push("mke2fs (apt-get install e2fsprogs)");
  if (missing.length > 0) {
    throw new Error(`v86 boot test prerequisites missing: ${missing.join(", ")}; or set MEDIC_SKIP_V86=1`);
  }
}

/** CPU seconds this process used since `from` (the emulator is single-threaded): less load-dependent than wall time. */
function cpuSeconds(from: NodeJS.CpuUsage): string {
  const d = process.cpuUsage(from);
  return ((d.user + d.system) / 1e6).toFixed(1);
}

describe.skipIf(skip)("Linux on v86", () => {
  let guest: GuestAssets;
  beforeAll(async () => {
    checkPrerequisites();
    guest = await buildGuest({ outDir: ".cache/guest", log: (l) => console.log(l) });
  }, 600_000);

  it(
    "probes the fake AHCI controller and runs the initramfs",
    async () => {
      const dev = new FakeAhci(true);
      const cpu0 = process.cpuUsage();
      const machine = await startV86Machine({
        vmlinuz: guest.vmlinuz,
        initrd: guest.initrd,
        cmdline: linuxCmdline({ rootwait: 3 }),
        memoryMiB: 256,
        pciDevice: dev,
        stopOnPowerOff: false,
      });
      const guard = setTimeout(() => void machine.stop(), BOOT_TIMEOUT_MS - 10_000);
      const end = await machine.done;
      clearTimeout(guard);

      // DMA against the halted guest's RAM: the kernel's banner is in memory, and a write reads back.
      const platform = dev.platform!;
      expect(platform.ramBytes).toBe(256 * 1024 * 1024);
      const banner = new TextEncoder().encode("Linux version 6.1.");
      let found = -1;
      for (let base = 0; base < 64 << 20 && found < 0; base += 1 << 20) {
        const chunk = platform.dmaRead(base, (1 << 20) + banner.length);
        found = Buffer.from(chunk).indexOf(Buffer.from(banner));
        if (found >= 0) found += base;
      }
      expect(found).toBeGreaterThan(0);
      const pattern = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) & 0xff);
      platform.dmaWrite(0x00200000, pattern);
      expect(platform.dmaRead(0x00200000, 4096)).toEqual(pattern);
      expect(() => platform.dmaRead(platform.ramBytes - 2, 4)).toThrow(RangeError);
      await machine.stop();
      const text = machine.lines.map((l) => l.text).join("\n");
      const phases = bootPhases(machine.lines);
      console.log(
        `fake-ahci boot (wall): ${formatBootPhases(phases)} end=${end.reason}@${(end.tMs / 1000).toFixed(1)}s ` +
          `cpu=${cpuSeconds(cpu0)}s`,
      );
      console.log(`fake-ahci boot (cpu):  ${formatBootPhases(bootPhases(machine.lines, "cpu"))}`);
      console.log(
        `fake-ahci device: ${dev.reads} reads, ${dev.writes} writes, stats ${JSON.stringify(machine.stats)}`,
      );

      expect(text).toMatch(/Linux version 6\.1\./);
      // Linux's ahci driver bound our function, read CAP/VS/PI and registered a (dummy-port) host.
      expect(text).toMatch(/ahci 0000:00:05\.0: found PCI INT A -> IRQ \d+/);
      expect(text).toMatch(/ahci 0000:00:05\.0: AHCI 0001\.0301 32 slots 1 ports 6 Gbps 0x0 impl SATA mode/);
      expect(text).toMatch(/ata1: DUMMY/);
      // The initramfs ran, loaded every module, found no disk and powered off.
      expect(text).toMatch(/^MEDIC-INITRAMFS start/m);
      expect(text).toMatch(/^MEDIC-INITRAMFS modules loaded/m);
      expect(text).toMatch(/^MEDIC-INITRAMFS no root disk/m);
      expect(phases.errors).toEqual([]);
      expect(["poweroff", "halt"]).toContain(end.reason);
      // SeaBIOS and Linux read the capability registers and wrote GHC.
      for (const off of [0x00, 0x04, 0x0c, 0x10]) expect(dev.touched.has(off)).toBe(true);
      expect(dev.writes).toBeGreaterThan(0);
      // The interrupt raised when Linux set GHC.IE reached its handler, which cleared IS.
      expect(dev.irqsRaised).toBeGreaterThan(0);
      expect(machine.stats.irqRaises).toBeGreaterThan(0);
      expect(dev.irqsAcked).toBe(dev.irqsRaised);
      expect(machine.currentIrq()).toBe(-1);
      // SeaBIOS assigned INTA of slot 5 to IRQ 10 (PIRQ link A) and left the command register enabled.
      const cfg = machine.pciConfig()!;
      expect(cfg[0x3c]).toBe(10);
      expect(cfg[0x3d]).toBe(1);
    },
    BOOT_TIMEOUT_MS,
  );

  it(
    "runs the root file system's checks from v86's IDE disk",
    async () => {
      const ide = await buildGuest({
        outDir: ".cache/guest-ide",
        debDir: ".cache/guest/debs",
        extraModules: ["ata_piix"],
        log: (l) => console.log(l),
      });
      const cpu0 = process.cpuUsage();
      const machine = await startV86Machine({
        vmlinuz: ide.vmlinuz,
        initrd: ide.initrd,
        ideDisk: ide.disk,
        cmdline: linuxCmdline(),
        memoryMiB: 256,
      });
      const guard = setTimeout(() => void machine.stop(), BOOT_TIMEOUT_MS - 10_000);
      const end = await machine.done;
      clearTimeout(guard);
      await machine.stop();
      const text = machine.lines.map((l) => l.text).join("\n");
      const phases = bootPhases(machine.lines);
      console.log(
        `ide boot (wall): ${formatBootPhases(phases)} end=${end.reason}@${(end.tMs / 1000).toFixed(1)}s ` +
          `cpu=${cpuSeconds(cpu0)}s`,
      );
      console.log(`ide boot (cpu):  ${formatBootPhases(bootPhases(machine.lines, "cpu"))}`);

      expect(phases.errors).toEqual([]);
      expect(text).toMatch(new RegExp(`^MEDIC-GUEST-READ files=${ide.manifest.dataFiles.length} `, "m"));
      const wrote = /^MEDIC-GUEST-WROTE path=(\S+) bytes=(\d+) sha256=([0-9a-f]{64})/m.exec(text);
      expect(wrote?.slice(1)).toEqual([
        ide.manifest.writeFile.path,
        String(ide.manifest.writeFile.bytes),
        ide.manifest.writeFile.sha256,
      ]);
      expect(text).toMatch(/^MEDIC-GUEST-READY t=\S+ errors=0$/m);
      expect(["poweroff", "halt"]).toContain(end.reason);
    },
    BOOT_TIMEOUT_MS + 120_000,
  );
});
