/**
 * A smoke-test PCI device for the v86 platform: an AHCI 1.3.1 controller (Intel ICH9 ids) with no
 * implemented port (CAP.NP = 0, PI = 0). SeaBIOS and Linux's ahci driver probe it and find no disk.
 */
import type { PciMmioDevice, PciPlatform } from "../../runtime/platform/v86/types.ts";

export const FAKE_AHCI_CAP =
  (1 << 30) | // SNCQ
  (3 << 20) | // ISS: 6 Gbps
  (1 << 18) | // SAM: AHCI only
  (31 << 8) | // NCS: 32 command slots
  0; // NP: 1 port (0-based) -- but PI says none is implemented

export class FakeAhci implements PciMmioDevice {
  readonly pciId = 0x05 << 3;
  readonly vendorId = 0x8086;
  readonly deviceId = 0x2922;
  readonly classCode = 0x010601;
  readonly barIndex = 5;
  readonly barBase = 0xfe800000;
  readonly barSize = 0x2000;

  ghc = 0x80000000;
  is = 0;
  reads = 0;
  writes = 0;
  /** Interrupts asserted (see {@link pokeIrqOnEnable}) and later cleared by the guest writing IS. */
  irqsRaised = 0;
  irqsAcked = 0;
  /** Offsets touched, for the test's curiosity. */
  readonly touched = new Set<number>();
  platform: PciPlatform | undefined;

  /**
   * @param pokeIrqOnEnable when the guest sets GHC.IE, latch IS bit 0 and assert INTA#; the line drops
   *   when the guest clears IS (as Linux's ahci interrupt handler does). Proves interrupt delivery.
   */
  constructor(readonly pokeIrqOnEnable = false) {}

  attach(platform: PciPlatform): void {
    this.platform = platform;
  }

  private reg32(offset: number): number {
    switch (offset) {
      case 0x00:
        return FAKE_AHCI_CAP >>> 0;
      case 0x04:
        return (this.ghc | 0x80000000) >>> 0;
      case 0x08:
        return this.is;
      case 0x0c:
        return 0; // PI
      case 0x10:
        return 0x00010301; // VS 1.3.1
      default:
        return 0;
    }
  }

  mmioRead(offset: number, size: 1 | 2 | 4): number {
    this.reads++;
    this.touched.add(offset & ~3);
    const shift = (offset & 3) * 8;
    const v = this.reg32(offset & ~3) >>> shift;
    return size === 4 ? v >>> 0 : size === 2 ? v & 0xffff : v & 0xff;
  }

  mmioWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.writes++;
    this.touched.add(offset & ~3);
    const aligned = offset & ~3;
    const shift = (offset & 3) * 8;
    const mask = (size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff) << shift;
    const merge = (old: number): number => ((old & ~mask) | ((value << shift) & mask)) >>> 0;
    if (aligned === 0x04) {
      // GHC: HR (bit 0) completes at once; IE (bit 1) is kept; AE (bit 31) is fixed at 1.
      const wasEnabled = (this.ghc & 0x2) !== 0;
      this.ghc = (merge(this.ghc) & 0x2) | 0x80000000;
      if ((merge(0) & 0x1) !== 0) this.is = 0; // HR resets IS
      if (this.pokeIrqOnEnable && !wasEnabled && (this.ghc & 0x2) !== 0) {
        this.is |= 1;
        this.irqsRaised++;
      }
      this.updateIrq();
    } else if (aligned === 0x08) {
      const before = this.is;
      this.is = (this.is & ~merge(0)) >>> 0; // write 1 to clear
      if (before !== 0 && this.is === 0) this.irqsAcked++;
      this.updateIrq();
    }
  }

  private updateIrq(): void {
    this.platform?.setIrq(this.is !== 0 && (this.ghc & 0x2) !== 0);
  }
}
