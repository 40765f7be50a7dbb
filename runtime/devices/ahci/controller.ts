import {
  type AtaCommand,
  COMMAND_HEADER_DW0_PRDTL,
  COMMAND_HEADER_DW0_PRDTL_SHIFT,
  COMMAND_HEADER_SIZE,
  COMMAND_LIST_SLOT,
  COMMAND_TABLE_CFIS,
  COMMAND_TABLE_PRDT,
  DEVICE,
  DetectionControl,
  DeviceDetection,
  decodeAtaCommand,
  decodeCommandHeader,
  decodePrdEntry,
  decodeRegH2DFis,
  emptyPioSetupFis,
  emptyRegD2HFis,
  emptySetDeviceBitsFis,
  encodeCommandHeader,
  encodePioSetupFis,
  encodeRegD2HFis,
  encodeSetDeviceBitsFis,
  HOST_BASE,
  HOST_CAP,
  HOST_CAP_NP,
  HOST_GHC,
  HOST_GHC_HR,
  HOST_GHC_IE,
  HOST_IS,
  HOST_PI,
  InterfaceSpeed,
  PIO_SETUP_FIS_FLAGS_D,
  PIO_SETUP_FIS_FLAGS_I,
  PORT_BASE,
  PORT_CI,
  PORT_CLB,
  PORT_CLB_CLB,
  PORT_CLBU,
  PORT_CMD,
  PORT_CMD_CLO,
  PORT_CMD_CR,
  PORT_CMD_FR,
  PORT_CMD_FRE,
  PORT_CMD_ST,
  PORT_COUNT,
  PORT_FB,
  PORT_FB_FB,
  PORT_FBU,
  PORT_IE,
  PORT_IS,
  PORT_IS_DHRS,
  PORT_IS_HBFS,
  PORT_IS_PSS,
  PORT_IS_SDBS,
  PORT_IS_TFES,
  PORT_SACT,
  PORT_SCTL,
  PORT_SCTL_DET,
  PORT_SIG,
  PORT_SIZE,
  PORT_SSTS,
  PORT_SSTS_DET_SHIFT,
  PORT_SSTS_IPM_SHIFT,
  PORT_SSTS_SPD_SHIFT,
  PORT_TFD,
  PORT_TFD_ERR_SHIFT,
  PowerState,
  PRD_ENTRY_DW3_DBC,
  PRD_ENTRY_SIZE,
  portOffset,
  RECEIVED_FIS_PSFIS,
  RECEIVED_FIS_RFIS,
  RECEIVED_FIS_SDBFIS,
  REG_D2H_FIS_FLAGS_I,
  REG_H2D_FIS_FLAGS_C,
  REG_H2D_FIS_SIZE,
  REG_H2D_FIS_TYPE_VALUE,
  RegisterFile,
  SET_DEVICE_BITS_FIS_FLAGS_I,
} from "../../../generated/ahci/index.ts";
import type { BlockBackend } from "../../block/types.ts";
import type { Clock } from "../../vmx/clock.ts";
import { identifyData } from "./identify.ts";

/** Where the controller reaches guest memory by DMA (a PhysicalMemory of the VMX host, or v86's RAM). */
export interface DmaMemory {
  isPhysicalRange(address: number, length: number): boolean;
  read(address: number, length: number): Uint8Array;
  write(address: number, data: Uint8Array): void;
}

export interface AhciControllerOptions {
  /** The disk on each port; the controller implements as many ports as disks. */
  readonly disks: readonly BlockBackend[];
  readonly memory: DmaMemory;
  readonly clock: Clock;
  /** Added to every command (device latency), in the clock's milliseconds. */
  readonly latencyMs?: number;
  /** The interrupt line (INTx); level-triggered. */
  readonly onInterrupt?: (level: boolean) => void;
  readonly model?: string;
  readonly serial?: string;
}

/** ATA status and error bits the controller reports (ATA8-ACS). */
const STATUS_BUSY = 0x80;
const STATUS_DRQ = 0x08;
const STATUS_PIO_DATA = 0x58;
const ERROR_ABORT = 0x04;
const ERROR_ID_NOT_FOUND = 0x10;
/** ATA device control register: software reset. */
const CONTROL_SRST = 0x04;
const SIGNATURE_ATA = 0x00000101;

class PortState {
  /** Bumped on reset or engine stop: a command that finishes after that is dropped. */
  epoch = 0;
  /** Slots whose command is executing (queued ones stay here until their tag completes). */
  readonly running = new Set<number>();
  /** An error stopped command processing until software clears PxCMD.ST. */
  halted = false;
  linkUp = false;
  /** The device's first register FIS after a reset, waiting for FIS reception to be enabled. */
  signaturePending = false;
  constructor(
    readonly index: number,
    readonly disk: BlockBackend,
    readonly base: number,
  ) {}
}

/**
 * The emulated AHCI 1.3.1 controller: the "physical" device behind the VMM. Its register
 * semantics come from the generated register file; this class adds what a device does on its
 * own: resets, the link, command processing with PRDT scatter/gather, NCQ and interrupts.
 */
export class AhciController {
  readonly registers = new RegisterFile();
  readonly ports: PortState[];
  private readonly memory: DmaMemory;
  private readonly clock: Clock;
  private readonly latencyMs: number;
  private readonly identify: Uint8Array[];
  private line = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  onInterrupt: (level: boolean) => void;
  /** Commands executed, for tests and benchmarks. */
  readonly stats = { commands: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };

  constructor(options: AhciControllerOptions) {
    if (options.disks.length === 0 || options.disks.length > PORT_COUNT) {
      throw new RangeError(`an AHCI controller has 1 to ${PORT_COUNT} ports, not ${options.disks.length}`);
    }
    this.memory = options.memory;
    this.clock = options.clock;
    this.latencyMs = options.latencyMs ?? 0;
    this.onInterrupt = options.onInterrupt ?? (() => {});
    this.ports = options.disks.map((disk, i) => new PortState(i, disk, portOffset(i, 0)));
    this.identify = options.disks.map((disk, i) =>
      identifyData({
        sectors: disk.sectors,
        model: options.model,
        serial: options.serial ?? `MEDIC${String(i).padStart(15, "0")}`,
      }),
    );
    this.resetHba();
  }

  // ---- MMIO -----------------------------------------------------------------------------------

  read(offset: number, size: number): number {
    return this.registers.read(offset, size);
  }

  write(offset: number, size: number, value: number): void {
    const dword = offset & ~3;
    const before = this.registers.write(offset, size, value);
    if (dword < PORT_BASE) return this.hostWritten(dword);
    const port = this.ports[Math.floor((dword - PORT_BASE) / (portOffset(1, 0) - PORT_BASE))];
    if (port === undefined) return;
    const register = dword - port.base;
    if (register >= PORT_SIZE) return;
    switch (register) {
      case PORT_CMD:
        return this.commandWritten(port, before);
      case PORT_SCTL:
        return this.controlWritten(port, before);
      case PORT_CI:
        return this.process(port);
      case PORT_IS:
      case PORT_IE:
        return this.updateInterrupt();
    }
  }

  /** True while any command is executing. */
  get busy(): boolean {
    return this.inFlight > 0;
  }

  /** Resolves when no command is executing. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  get interruptLevel(): boolean {
    return this.line;
  }

  private hostWritten(dword: number): void {
    if (dword === HOST_BASE + HOST_GHC && (this.registers.get(HOST_BASE + HOST_GHC) & HOST_GHC_HR) !== 0) {
      this.resetHba();
    }
    if (dword === HOST_BASE + HOST_GHC || dword === HOST_BASE + HOST_IS) this.updateInterrupt();
  }

  // ---- resets and the link --------------------------------------------------------------------

  /** GHC.HR: every register to its reset value, every command dropped, links come back up. */
  private resetHba(): void {
    this.registers.reset();
    const r = this.registers;
    // Hardware-initialised values: the ports this controller really has.
    const np = this.ports.length - 1;
    r.set(HOST_BASE + HOST_CAP, ((r.get(HOST_BASE + HOST_CAP) & ~HOST_CAP_NP) | np) >>> 0);
    r.set(HOST_BASE + HOST_PI, this.ports.length === 32 ? 0xffffffff : (1 << this.ports.length) - 1);
    for (const port of this.ports) {
      this.dropCommands(port);
      this.linkUp(port);
    }
    this.updateInterrupt();
  }

  private dropCommands(port: PortState): void {
    port.epoch++;
    port.running.clear();
    port.halted = false;
    this.registers.set(port.base + PORT_CI, 0);
    this.registers.set(port.base + PORT_SACT, 0);
  }

  /** COMRESET finished: the device is there, PHY communication established, signature FIS sent. */
  private linkUp(port: PortState): void {
    const r = this.registers;
    r.set(
      port.base + PORT_SSTS,
      (PowerState.ACTIVE << PORT_SSTS_IPM_SHIFT) |
        (InterfaceSpeed.GEN3 << PORT_SSTS_SPD_SHIFT) |
        (DeviceDetection.ESTABLISHED << PORT_SSTS_DET_SHIFT),
    );
    port.linkUp = true;
    port.signaturePending = true;
    this.deliverSignature(port);
  }

  /** The device's first D2H FIS carries its signature; it lands once FIS reception is on. */
  private deliverSignature(port: PortState): void {
    const r = this.registers;
    if (!port.signaturePending || (r.get(port.base + PORT_CMD) & PORT_CMD_FRE) === 0) return;
    port.signaturePending = false;
    const fis = emptyRegD2HFis();
    fis.STATUS = DEVICE.readyStatus;
    fis.ERROR = 0x01; // diagnostics passed
    fis.COUNT = SIGNATURE_ATA & 0xff;
    fis.LBA0 = (SIGNATURE_ATA >>> 8) & 0xff;
    fis.LBA1 = (SIGNATURE_ATA >>> 16) & 0xff;
    fis.LBA2 = (SIGNATURE_ATA >>> 24) & 0xff;
    fis.FLAGS |= REG_D2H_FIS_FLAGS_I;
    this.storeFis(port, RECEIVED_FIS_RFIS, encodeRegD2HFis(fis));
    r.set(port.base + PORT_SIG, SIGNATURE_ATA);
    r.set(port.base + PORT_TFD, (fis.ERROR << PORT_TFD_ERR_SHIFT) | fis.STATUS);
    this.raise(port, PORT_IS_DHRS);
  }

  private controlWritten(port: PortState, before: number): void {
    const r = this.registers;
    const det = r.get(port.base + PORT_SCTL) & PORT_SCTL_DET;
    const was = before & PORT_SCTL_DET;
    if (det === DetectionControl.COMRESET) {
      // COMRESET asserted: the link is down until software releases it.
      port.linkUp = false;
      this.dropCommands(port);
      r.set(port.base + PORT_SSTS, DeviceDetection.PRESENT);
      r.set(port.base + PORT_TFD, 0x7f | STATUS_BUSY);
      r.set(port.base + PORT_SIG, 0xffffffff);
    } else if (det === DetectionControl.DISABLE) {
      port.linkUp = false;
      this.dropCommands(port);
      r.set(port.base + PORT_SSTS, DeviceDetection.OFFLINE);
    } else if (det === DetectionControl.NO_ACTION && was !== DetectionControl.NO_ACTION) {
      this.linkUp(port);
    }
  }

  private commandWritten(port: PortState, before: number): void {
    const r = this.registers;
    const offset = port.base + PORT_CMD;
    let cmd = r.get(offset);
    if ((cmd & PORT_CMD_ST) !== 0 && (before & PORT_CMD_ST) === 0) {
      cmd |= PORT_CMD_CR;
    } else if ((cmd & PORT_CMD_ST) === 0 && (before & PORT_CMD_ST) !== 0) {
      // Clearing ST clears PxCI and PxSACT and stops the engine (AHCI 1.3.1, 3.3.7).
      cmd &= ~PORT_CMD_CR;
      this.dropCommands(port);
    }
    cmd = (cmd & PORT_CMD_FRE) !== 0 ? cmd | PORT_CMD_FR : cmd & ~PORT_CMD_FR;
    if ((cmd & PORT_CMD_CLO) !== 0) {
      // Command list override: BSY and DRQ clear, and the bit clears itself.
      r.clearBits(port.base + PORT_TFD, STATUS_BUSY | STATUS_DRQ);
      cmd &= ~PORT_CMD_CLO;
    }
    r.set(offset, cmd >>> 0);
    this.deliverSignature(port);
    if ((cmd & PORT_CMD_ST) !== 0) this.process(port);
  }

  // ---- command processing ---------------------------------------------------------------------

  private process(port: PortState): void {
    const r = this.registers;
    if (port.halted || (r.get(port.base + PORT_CMD) & PORT_CMD_ST) === 0 || !port.linkUp) return;
    const issued = r.get(port.base + PORT_CI);
    for (let slot = 0; slot < 32; slot++) {
      if ((issued & (1 << slot)) === 0 || port.running.has(slot)) continue;
      port.running.add(slot);
      this.inFlight++;
      void this.execute(port, slot, port.epoch).finally(() => this.finished());
    }
  }

  private finished(): void {
    this.inFlight--;
    if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private async execute(port: PortState, slot: number, epoch: number): Promise<void> {
    const r = this.registers;
    const clb = r.get(port.base + PORT_CLB) & PORT_CLB_CLB;
    const headerAddress =
      clb + r.get(port.base + PORT_CLBU) * 2 ** 32 + COMMAND_LIST_SLOT + slot * COMMAND_HEADER_SIZE;
    const header = this.dma(() => decodeCommandHeader(this.memory.read(headerAddress, COMMAND_HEADER_SIZE)));
    if (header === null) return this.hostBusError(port);
    const tableAddress = header.CTBA + header.CTBAU * 2 ** 32;
    const entries = (header.DW0 & COMMAND_HEADER_DW0_PRDTL) >>> COMMAND_HEADER_DW0_PRDTL_SHIFT;
    const table = this.dma(() =>
      this.memory.read(tableAddress, COMMAND_TABLE_PRDT + entries * PRD_ENTRY_SIZE),
    );
    if (table === null) return this.hostBusError(port);
    const fisBytes = table.subarray(COMMAND_TABLE_CFIS, COMMAND_TABLE_CFIS + REG_H2D_FIS_SIZE);
    const fis = decodeRegH2DFis(fisBytes);
    const regions: { address: number; length: number }[] = [];
    for (let i = 0; i < entries; i++) {
      const entry = decodePrdEntry(table, COMMAND_TABLE_PRDT + i * PRD_ENTRY_SIZE);
      regions.push({
        address: entry.DBA + entry.DBAU * 2 ** 32,
        length: (entry.DW3 & PRD_ENTRY_DW3_DBC) + 1,
      });
    }
    this.stats.commands++;
    if (fis.TYPE !== REG_H2D_FIS_TYPE_VALUE) return this.fail(port, slot, null, ERROR_ABORT);
    if ((fis.FLAGS & REG_H2D_FIS_FLAGS_C) === 0) return this.deviceControl(port, slot, fis.CONTROL);

    const command = decodeAtaCommand(fis);
    if (this.latencyMs > 0) await this.clock.sleep(this.latencyMs);
    else await this.clock.sleep(0);
    if (port.epoch !== epoch) return;
    switch (command.kind) {
      case "read":
      case "write":
        return this.transfer(port, slot, epoch, command, regions, headerAddress);
      case "data_in":
        if (command.name !== "IDENTIFY_DEVICE") return this.fail(port, slot, null, ERROR_ABORT);
        return this.pioIn(port, slot, this.identify[port.index]!, regions, headerAddress);
      case "flush":
        await port.disk.flush();
        if (port.epoch !== epoch) return;
        return this.complete(port, slot, null, 0, headerAddress);
      case "nondata":
      case "trim":
        return this.complete(port, slot, null, 0, headerAddress);
      case "other":
        return this.fail(port, slot, null, ERROR_ABORT);
    }
  }

  private async transfer(
    port: PortState,
    slot: number,
    epoch: number,
    command: Extract<AtaCommand, { kind: "read" | "write" }>,
    regions: readonly { address: number; length: number }[],
    headerAddress: number,
  ): Promise<void> {
    const tag = command.queued ? (command.tag ?? slot) : null;
    if (tag !== null) {
      // The device accepts a queued command at once: its slot frees, its tag stays active.
      this.registers.clearBits(port.base + PORT_CI, 1 << slot);
      port.running.delete(slot);
    }
    const bytes = command.sectors * DEVICE.sectorSize;
    if (command.lba + command.sectors > port.disk.sectors) {
      return this.fail(port, slot, tag, ERROR_ABORT | ERROR_ID_NOT_FOUND);
    }
    const room = regions.reduce((sum, r) => sum + r.length, 0);
    if (room < bytes) return this.fail(port, slot, tag, ERROR_ABORT);
    try {
      if (command.kind === "read") {
        const data = await port.disk.read(command.lba, command.sectors);
        if (port.epoch !== epoch) return;
        if (!this.scatter(data, regions)) return this.hostBusError(port);
        this.stats.bytesRead += bytes;
      } else {
        const data = this.gather(bytes, regions);
        if (data === null) return this.hostBusError(port);
        await port.disk.write(command.lba, data);
        if (port.epoch !== epoch) return;
        this.stats.bytesWritten += bytes;
      }
    } catch {
      if (port.epoch !== epoch) return;
      return this.fail(port, slot, tag, ERROR_ABORT);
    }
    this.complete(port, slot, tag, bytes, headerAddress);
  }

  private pioIn(
    port: PortState,
    slot: number,
    data: Uint8Array,
    regions: readonly { address: number; length: number }[],
    headerAddress: number,
  ): void {
    if (!this.scatter(data, regions)) return this.hostBusError(port);
    const fis = emptyPioSetupFis();
    fis.FLAGS |= PIO_SETUP_FIS_FLAGS_D | PIO_SETUP_FIS_FLAGS_I;
    fis.STATUS = STATUS_PIO_DATA;
    fis.E_STATUS = DEVICE.readyStatus;
    fis.TRANSFER = data.length;
    this.storeFis(port, RECEIVED_FIS_PSFIS, encodePioSetupFis(fis));
    this.writeTransferred(headerAddress, data.length);
    this.registers.set(port.base + PORT_TFD, DEVICE.readyStatus);
    this.finishSlot(port, slot);
    this.raise(port, PORT_IS_PSS);
  }

  /** A FIS with C = 0 is a device control: a software reset sequence (SRST set, then clear). */
  private deviceControl(port: PortState, slot: number, control: number): void {
    this.finishSlot(port, slot);
    if ((control & CONTROL_SRST) !== 0) {
      this.registers.set(port.base + PORT_TFD, 0x7f | STATUS_BUSY);
    } else {
      port.signaturePending = true;
      this.deliverSignature(port);
    }
  }

  private complete(
    port: PortState,
    slot: number,
    tag: number | null,
    bytes: number,
    headerAddress: number,
  ): void {
    // After an error the port is halted: commands still running finish silently, and the error
    // stays in the task file until software restarts the port (which drops them).
    if (port.halted) return;
    const r = this.registers;
    r.set(port.base + PORT_TFD, DEVICE.readyStatus);
    if (tag === null) {
      this.writeTransferred(headerAddress, bytes);
      const fis = emptyRegD2HFis();
      fis.STATUS = DEVICE.readyStatus;
      fis.FLAGS |= REG_D2H_FIS_FLAGS_I;
      this.storeFis(port, RECEIVED_FIS_RFIS, encodeRegD2HFis(fis));
      this.finishSlot(port, slot);
      this.raise(port, PORT_IS_DHRS);
    } else {
      const fis = emptySetDeviceBitsFis();
      fis.STATUS = DEVICE.readyStatus & 0x77;
      fis.FLAGS |= SET_DEVICE_BITS_FIS_FLAGS_I;
      fis.ACTIVE = (1 << tag) >>> 0;
      this.storeFis(port, RECEIVED_FIS_SDBFIS, encodeSetDeviceBitsFis(fis));
      r.clearBits(port.base + PORT_SACT, 1 << tag);
      this.raise(port, PORT_IS_SDBS);
    }
  }

  private finishSlot(port: PortState, slot: number): void {
    port.running.delete(slot);
    this.registers.clearBits(port.base + PORT_CI, 1 << slot);
  }

  /**
   * A failed command, as a disk reports it: error status and register FIS, PxIS.TFES (with
   * DHRS, as real HBAs and firmware expect), and the port halts until software restarts it;
   * the slot stays issued.
   */
  private fail(port: PortState, _slot: number, _tag: number | null, error: number): void {
    this.stats.errors++;
    port.halted = true;
    const fis = emptyRegD2HFis();
    fis.STATUS = DEVICE.errorStatus;
    fis.ERROR = error;
    fis.FLAGS |= REG_D2H_FIS_FLAGS_I;
    this.storeFis(port, RECEIVED_FIS_RFIS, encodeRegD2HFis(fis));
    this.registers.set(port.base + PORT_TFD, ((error << PORT_TFD_ERR_SHIFT) | DEVICE.errorStatus) >>> 0);
    this.raise(port, PORT_IS_TFES | PORT_IS_DHRS);
  }

  /** A pointer outside physical memory: host bus fatal error, the port halts. */
  private hostBusError(port: PortState): void {
    this.stats.errors++;
    port.halted = true;
    this.raise(port, PORT_IS_HBFS);
  }

  // ---- DMA ------------------------------------------------------------------------------------

  private dma<T>(read: () => T): T | null {
    try {
      return read();
    } catch {
      return null;
    }
  }

  private scatter(data: Uint8Array, regions: readonly { address: number; length: number }[]): boolean {
    let at = 0;
    for (const region of regions) {
      if (at >= data.length) break;
      const take = Math.min(region.length, data.length - at);
      if (!this.memory.isPhysicalRange(region.address, take)) return false;
      this.memory.write(region.address, data.subarray(at, at + take));
      at += take;
    }
    return true;
  }

  private gather(bytes: number, regions: readonly { address: number; length: number }[]): Uint8Array | null {
    const out = new Uint8Array(bytes);
    let at = 0;
    for (const region of regions) {
      if (at >= bytes) break;
      const take = Math.min(region.length, bytes - at);
      if (!this.memory.isPhysicalRange(region.address, take)) return null;
      out.set(this.memory.read(region.address, take), at);
      at += take;
    }
    return out;
  }

  private storeFis(port: PortState, offset: number, fis: Uint8Array): void {
    const r = this.registers;
    if ((r.get(port.base + PORT_CMD) & PORT_CMD_FRE) === 0) return;
    const base = (r.get(port.base + PORT_FB) & PORT_FB_FB) + r.get(port.base + PORT_FBU) * 2 ** 32;
    if (this.memory.isPhysicalRange(base + offset, fis.length)) this.memory.write(base + offset, fis);
  }

  private writeTransferred(headerAddress: number, bytes: number): void {
    const raw = this.dma(() => this.memory.read(headerAddress, COMMAND_HEADER_SIZE));
    if (raw === null) return;
    // Only PRDBC changes: re-encode into the bytes read so the reserved dwords stay untouched.
    const header = decodeCommandHeader(raw);
    header.PRDBC = bytes;
    this.memory.write(headerAddress, encodeCommandHeader(header, raw));
  }

  // ---- interrupts -----------------------------------------------------------------------------

  private raise(port: PortState, bits: number): void {
    this.registers.setBits(port.base + PORT_IS, bits);
    this.updateInterrupt();
  }

  /** PxIS & PxIE latch IS.IPS; the line is GHC.IE && IS != 0 (AHCI 1.3.1, 5.6). */
  private updateInterrupt(): void {
    const r = this.registers;
    let summary = r.get(HOST_BASE + HOST_IS);
    for (const port of this.ports) {
      if ((r.get(port.base + PORT_IS) & r.get(port.base + PORT_IE)) !== 0) summary |= 1 << port.index;
    }
    r.set(HOST_BASE + HOST_IS, summary >>> 0);
    const level = (r.get(HOST_BASE + HOST_GHC) & HOST_GHC_IE) !== 0 && summary !== 0;
    if (level !== this.line) {
      this.line = level;
      this.onInterrupt(level);
    }
  }
}
