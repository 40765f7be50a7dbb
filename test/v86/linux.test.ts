/**
 * Debian 12's unmodified i386 kernel boots in v86 from a disk behind medic's emulated AHCI controller,
 * in the three modes of `medic deploy --guest linux`:
 *   bare         copy-then-boot, the guest drives the controller directly;
 *   passthrough  copy-then-boot, every register access trapped to the generated mediator;
 *   streaming    the image streams in while the guest boots, then the VMM turns itself off.
 * Each boot must reach the guest's marker with no ATA error, timeout or link reset on the console, and
 * the finished disk must verify (image + what the guest wrote, see runtime/platform/v86/linux-deploy.ts)
 * with the guest's files on it and a clean file system.
 *
 * Never skipped: missing tools fail with what to install (.ci/run installs them). One guest build
 * (.cache/guest) serves every test.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGuest, type GuestAssets } from "../../runtime/guest/linux/build.ts";
import type { GuestMode } from "../../runtime/platform/v86/linux.ts";
import {
  deployLinux,
  guestFilesIn,
  type LinuxDeployResult,
  type LinuxGuestFiles,
} from "../../runtime/platform/v86/linux-deploy.ts";
import { AHCI_BAR_BASE, vmmLayout } from "../../runtime/platform/v86/medic-ahci.ts";
import { bootPhases, formatBootPhases } from "../../runtime/platform/v86/phases.ts";
import { requireV86Prerequisites } from "./prerequisites.ts";

const BOOT_TIMEOUT_MS = 300_000;
/** What the issue asks the console never to show. */
const ATA_TROUBLE =
  /ata\d+(\.\d+)?: .*(failed|timeout)|hard resetting link|SError|exception Emask|I\/O error/;
const LINK_MBPS = 100;

describe("unmodified Linux on medic's AHCI controller (v86)", () => {
  let assets: GuestAssets;
  let files: LinuxGuestFiles;
  let dir: string;
  /** When Linux found its root disk in bare mode (wall ms since power-on): paces the streaming test. */
  let bareRootDiskMs: number | undefined;

  beforeAll(async () => {
    requireV86Prerequisites();
    assets = await buildGuest({ outDir: ".cache/guest", log: (l) => console.log(l) });
    files = await guestFilesIn(".cache/guest");
    dir = await mkdtemp(join(tmpdir(), "medic-linux-"));
  }, 600_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function boot(mode: GuestMode, extra: { backgroundRate?: number } = {}): Promise<LinuxDeployResult> {
    const disk = join(dir, `${mode}.img`);
    const result = await deployLinux({
      image: assets.disk,
      disk,
      mode,
      guest: files,
      linkBytesPerSecond: (LINK_MBPS * 1e6) / 8,
      backgroundRate: extra.backgroundRate,
      verify: true,
      timeoutMs: BOOT_TIMEOUT_MS - 30_000,
    });
    const s = result.summary;
    console.log(
      `${mode}: ready ${((s.boot_ms ?? 0) / 1000).toFixed(1)} s after power-on; ${formatBootPhases(result.run.phases)} ` +
        `end=${s.guest_end}@${(s.guest_end_ms / 1000).toFixed(1)}s exits=${s.exits_total} ` +
        `redirected=${s.bytes_redirected} deploy_done=${s.deploy_done_ms === null ? "-" : (s.deploy_done_ms / 1000).toFixed(1)}s ` +
        `io=${JSON.stringify({ ...result.guest.io, streamedReads: result.guest.io.streamedReads.length })} ` +
        `verify=${JSON.stringify(s.verify_detail)}`,
    );
    console.log(`${mode} (cpu): ${formatBootPhases(bootPhases(result.run.lines, "cpu"))}`);
    return result;
  }

  /** What every mode must show: the guest's own checks, a quiet console, a verified disk. */
  function expectHealthyBoot(r: LinuxDeployResult): void {
    const s = r.summary;
    const text = r.run.lines.map((l) => l.text).join("\n");
    const trouble = r.run.lines.filter((l) => ATA_TROUBLE.test(l.text)).map((l) => l.text);
    expect(trouble).toEqual([]);
    expect(s.guest_errors).toEqual([]);
    expect(["poweroff", "halt"]).toContain(s.guest_end);
    // Linux's ahci driver drove medic's controller: SATA link, the disk, its partition.
    expect(text).toMatch(/ahci 0000:00:05\.0: AHCI 0001\.0301 32 slots 1 ports 6 Gbps 0x1 impl SATA mode/);
    expect(text).toContain(`abar m8192@0x${AHCI_BAR_BASE.toString(16)}`);
    expect(text).toMatch(/ata1: SATA link up 6\.0 Gbps/);
    expect(text).toMatch(/ata1\.00: \d+ sectors, multi \d+: LBA48 NCQ \(depth 32\)/);
    expect(text).toMatch(/ sda: sda1$/m);
    // The VMM's memory is hidden from the kernel (reserved in its memory map).
    expect(text).toContain(vmmLayout(256 * 1024 * 1024).cmdline);
    // The guest's own checks: every file read back right, its writes re-read from the disk.
    expect(text).toMatch(new RegExp(`^MEDIC-GUEST-READ files=${assets.manifest.dataFiles.length} `, "m"));
    const wrote = /^MEDIC-GUEST-WROTE path=(\S+) bytes=(\d+) sha256=([0-9a-f]{64})/m.exec(text);
    expect(wrote?.slice(1)).toEqual([
      assets.manifest.writeFile.path,
      String(assets.manifest.writeFile.bytes),
      assets.manifest.writeFile.sha256,
    ]);
    expect(text).toMatch(/^MEDIC-GUEST-READY t=\S+ errors=0$/m);
    expect(text).toMatch(/^MEDIC-GUEST-DONE t=\S+ errors=0$/m);
    expect(s.boot_ms).toBeGreaterThan(0);
    expect(s.os_ready_ms).toBeGreaterThan(0);
    // The finished disk: the image plus the guest's writes, a clean ext4 with both of the guest's files.
    expect(s.verify_detail?.bad_sectors).toEqual([]);
    expect(s.guest_disk?.fsckClean).toBe(true);
    expect(s.guest_disk?.files.map((f) => [f.path, f.ok])).toEqual([
      [assets.manifest.writeFile.path, true],
      [assets.manifest.afterFile.path, true],
    ]);
    expect(s.verified).toBe(true);
    expect(r.guest.machine.host.stats.exitsAfterOff).toBe(0);
  }

  it(
    "boots in bare mode: the guest drives the controller, no VMM",
    async () => {
      const r = await boot("bare");
      expectHealthyBoot(r);
      const m = r.guest.machine;
      expect(m.mediator).toBeNull();
      expect(m.host.stats.exitsByReason["ept-violation"]).toBe(0);
      expect(m.region.stats.directReads).toBeGreaterThan(0);
      // Everything the guest wrote reached the disk unseen by any VMM: compared with nothing, checked by
      // the guest itself and by reading its files back.
      expect(r.guest.mediatedWrites.size).toBe(0);
      expect(r.summary.verify_detail!.guest_sectors_unknown).toBeGreaterThan(0);
      expect(r.summary.copy_ms).toBeGreaterThan(0);
      // SeaBIOS routed INTA# of slot 5 to IRQ 10; the line is quiet after power-off.
      expect(r.guest.v86.pciConfig()![0x3c]).toBe(10);
      expect(r.guest.v86.currentIrq()).toBe(-1);
      bareRootDiskMs = r.run.phases.rootDiskMs;
    },
    BOOT_TIMEOUT_MS,
  );

  it(
    "boots in passthrough mode: every register access through the generated mediator",
    async () => {
      const r = await boot("passthrough");
      expectHealthyBoot(r);
      const m = r.guest.machine;
      const counters = m.mediator!.counters;
      expect(m.host.on).toBe(true);
      expect(m.host.stats.directAccesses).toBe(0);
      expect(m.host.stats.exitsByReason["ept-violation"]).toBeGreaterThan(1000);
      expect(counters.passed).toBe(counters.guestCommands);
      expect(
        counters.redirected + counters.ownCommands + counters.refusedAddresses + counters.malformed,
      ).toBe(0);
      // The mediator saw every guest write, so every written sector is compared with the guest's data.
      expect(r.guest.directWrites.size).toBe(0);
      expect(r.summary.verify_detail!.guest_sectors_known).toBeGreaterThan(0);
      expect(r.summary.verify_detail!.guest_sectors_unknown).toBe(0);
    },
    BOOT_TIMEOUT_MS,
  );

  it(
    "boots while the image streams in, then runs on with the VMM off",
    async () => {
      // Pace the background copy so it reaches the boot's files (after 40 MiB the guest never reads)
      // about when Linux looks for its root disk: the guest then reads files the copy has not reached,
      // and the copy is still running during the root fs's reads. Paced from the bare boot just measured.
      const firstBootByte = assets.manifest.bootFiles.firstLba * 512;
      const arrivalMs = 1.4 * (bareRootDiskMs ?? 45_000);
      const backgroundRate = firstBootByte / (arrivalMs / 1000);
      console.log(
        `streaming: background copy at ${((backgroundRate * 8) / 1e6).toFixed(1)} Mbit/s on a ${LINK_MBPS} Mbit/s link, ` +
          `reaching the boot's files (${(firstBootByte / 1048576).toFixed(1)} MiB in) at ~${(arrivalMs / 1000).toFixed(0)} s`,
      );
      const r = await boot("streaming", { backgroundRate });
      expectHealthyBoot(r);
      const s = r.summary;
      const m = r.guest.machine;
      // It streamed during the boot: reads served from the image, among them reads of the root fs's
      // files, and the copy still running when the root fs's init read its files.
      expect(s.bytes_redirected).toBeGreaterThan(0);
      const { firstLba, endLba } = assets.manifest.bootFiles;
      const streamedBootReads = r.guest.io.streamedReads.filter(
        (q) => q.lba < endLba && q.lba + q.sectors > firstLba,
      );
      console.log(
        `streaming: ${r.guest.io.streamedReads.length} guest reads streamed (${streamedBootReads.length} of the boot's files): ` +
          r.guest.io.streamedReads
            .slice(0, 12)
            .map((q) => `${q.action}@${q.lba}+${q.sectors}`)
            .join(" "),
      );
      expect(streamedBootReads.length).toBeGreaterThan(0);
      expect(s.deploy_done_ms).not.toBeNull();
      expect(s.deploy_done_ms!).toBeGreaterThan(r.run.phases.guestStartMs!);
      expect(s.bytes_fetched).toBeGreaterThanOrEqual(
        s.image_bytes - s.verify_detail!.guest_sectors_known * 512,
      );
      // De-virtualized; the guest's last phase (write, sync, re-read, remount) ran with the VMM off and
      // caused no exit at all.
      expect(s.devirtualized_at_ms).not.toBeNull();
      expect(m.host.on).toBe(false);
      expect(r.run.vmmOffAtRelease).toBe(true);
      expect(s.exits_after_devirt).toBe(0);
      expect(m.host.stats.exitsAfterOff).toBe(0);
      expect(r.run.exitsAtRelease).toBe(r.run.exitsAtEnd);
      expect(m.host.stats.directAccesses).toBeGreaterThan(0);
      // Verified: guest writes seen by the mediator compared exactly; those after de-virtualization
      // (unknowable to medic) excluded, and the guest's file written then is on the disk.
      expect(s.verify_detail!.guest_sectors_known).toBeGreaterThan(0);
      expect(s.verify_detail!.guest_sectors_unknown).toBeGreaterThan(0);
      expect(r.guest.io.directWrites).toBeGreaterThan(0);
    },
    BOOT_TIMEOUT_MS,
  );
});
