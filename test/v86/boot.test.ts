/**
 * Boots Debian 12's unmodified i386 kernel in v86 with a fake PCI device: an AHCI controller with no
 * ports. SeaBIOS and Linux's ahci driver must probe it through our config space and MMIO window; the
 * initramfs must run, find no root disk and power off. (The guest on medic's real controller, in every
 * mode: linux.test.ts.)
 *
 * Needs (Debian 12, as root): `apt-get install seabios e2fsprogs` and the i386 architecture, which the
 * builder adds itself. Never skipped: missing tools fail the test with what to install. Assets are
 * cached in .cache/guest (shared with linux.test.ts).
 */
import { beforeAll, describe, expect, it } from "vitest";
import { buildGuest, type GuestAssets } from "../../runtime/guest/linux/build.ts";
import { linuxCmdline, startV86Machine } from "../../runtime/platform/v86/machine.ts";
import { bootPhases, formatBootPhases } from "../../runtime/platform/v86/phases.ts";
import { FakeAhci } from "./fake-ahci.ts";
import { requireV86Prerequisites } from "./prerequisites.ts";

const BOOT_TIMEOUT_MS = 240_000;

/** CPU seconds this process used since `from` (the emulator is single-threaded): less load-dependent than wall time. */
function cpuSeconds(from: NodeJS.CpuUsage): string {
  const d = process.cpuUsage(from);
  return ((d.user + d.system) / 1e6).toFixed(1);
}

describe("Linux on v86", () => {
  let guest: GuestAssets;
  beforeAll(async () => {
    requireV86Prerequisites();
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
});
