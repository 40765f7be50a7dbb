/**
 * The medic side of the v86 platform: what a PCI device must provide to be plugged into the emulated
 * PC. Nothing here refers to v86; `machine.ts` is the only module that does.
 */

/** What the platform gives a device once it is plugged in. */
export interface PciPlatform {
  /** Copy `len` bytes of guest-physical memory starting at `addr` (a fresh array). */
  dmaRead(addr: number, len: number): Uint8Array;
  /** Write `data` into guest-physical memory at `addr` (keeps the emulator's JIT cache coherent). */
  dmaWrite(addr: number, data: Uint8Array): void;
  /** Drive the device's level-triggered INTx line (INTA#). Repeated calls with the same level are cheap. */
  setIrq(level: boolean): void;
  /** Size of guest RAM in bytes; DMA outside [0, ramBytes) is refused by the platform. */
  readonly ramBytes: number;
}

/**
 * A PCI function with one 32-bit non-prefetchable memory BAR, whose registers are served synchronously
 * by medic code. Offsets passed to `mmioRead`/`mmioWrite` are relative to `barBase`.
 */
export interface PciMmioDevice {
  /** Bus/device/function number as v86 expects it: `device << 3 | function` on bus 0, e.g. `0x05 << 3`. */
  readonly pciId: number;
  readonly vendorId: number;
  readonly deviceId: number;
  /** 24-bit class code: base class << 16 | subclass << 8 | prog-if, e.g. 0x010601 for AHCI. */
  readonly classCode: number;
  readonly revisionId?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  /** Which BAR (0..5) holds the register window; 5 for AHCI's ABAR. */
  readonly barIndex: number;
  /** Guest-physical address of the window. v86 never relocates memory BARs: this is final. */
  readonly barBase: number;
  /** Size of the BAR as the guest sees it when sizing it (a power of two, at least 16). */
  readonly barSize: number;
  /** Read a register; `size` bytes at `offset` (little endian). Must be synchronous. */
  mmioRead(offset: number, size: 1 | 2 | 4): number;
  /** Write a register. Must be synchronous (start any long work asynchronously). */
  mmioWrite(offset: number, size: 1 | 2 | 4, value: number): void;
  /** Called once, before the guest runs, with the DMA and interrupt hooks. */
  attach(platform: PciPlatform): void;
}
