import {
  type AtaCommand,
  COMMAND_HEADER_CTBA,
  COMMAND_HEADER_CTBAU,
  COMMAND_HEADER_DW0,
  COMMAND_HEADER_DW0_PRDTL,
  COMMAND_HEADER_DW0_PRDTL_SHIFT,
  COMMAND_HEADER_PRDBC,
  COMMAND_HEADER_SIZE,
  COMMAND_LIST_SLOT,
  COMMAND_TABLE_CFIS,
  COMMAND_TABLE_PRDT,
  DEVICE,
  DetectionControl,
  DeviceDetection,
  decodeAtaCommand,
  decodeRegH2DFis,
  emptyPioSetupFis,
  emptyRegD2HFis,
  emptySetDeviceBitsFis,
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
  PRD_ENTRY_DBA,
  PRD_ENTRY_DBAU,
  PRD_ENTRY_DW3,
  PRD_ENTRY_DW3_DBC,
  PRD_ENTRY_SIZE,
  portOffset,
  RECEIVED_FIS_PSFIS,
  RECEIVED_FIS_RFIS,
  RECEIVED_FIS_SDBFIS,
  REG_D2H_FIS_FLAGS_I,
  REG_H2D_FIS_FLAGS_C,
  REG_H2D_FIS_TYPE_VALUE,
  RegisterFile,
  SET_DEVICE_BITS_FIS_FLAGS_I,
} from "../../../generated/ahci/index.ts";
import type { BlockBackend } from "../../block/types.ts";
import { type Clock, RealClock } from "../../vmx/clock.ts";
import { identifyData } from "./identify.ts";

/** Where the controller reaches guest memory by DMA (a PhysicalMemory of the VMX host, or v86's RAM). */
export interface DmaMemory {
  isPhysicalRange(address: number, length: number): boolean;
  read(address: number, length: number): Uint8Array;
  write(address: number, data: Uint8Array): void;
  /**
   * Optional: a live view of RAM (see PhysicalMemory.liveView). With it the controller parses
   * command headers and tables in place and disks read straight into guest buffers.
   */
  liveView?(address: number, length: number): Uint8Array;
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
  /** Status bits were raised (a command ended), whether or not the line moved: for a VMM watching. */
  readonly onStatus?: () => void;
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
  /**
   * Slots whose command is executing, one bit per slot. A queued command leaves once the device
   * has accepted it (its tag stays in PxSACT); any other stays until it completes or fails.
   */
  running = 0;
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
 * One command from its PxCI bit to its completion. Pooled and reused: at 100k commands a
 * second, a fresh record and region list per command is measurable garbage.
 */
class Command {
  port!: PortState;
  slot = 0;
  /** The port's epoch when the command was fetched: a reset since then drops it. */
  epoch = 0;
  headerAddress = 0;
  ata!: AtaCommand;
  /** The PRDT as parallel lists of guest addresses and byte counts; the first `regions` count. */
  regions = 0;
  readonly addresses: number[] = [];
  readonly lengths: number[] = [];
  /** Reusable buffer for scattered reads and for writes (see STAGING_LIMIT). */
  staging: Uint8Array | null = null;
  /** Bound once, for setImmediate and promise callbacks: continues the command after its delay. */
  readonly resume: () => void;

  constructor(run: (command: Command) => void) {
    this.resume = () => run(this);
  }

  /** Records the `entries` PRD entries of a command table (read in place, no decode objects). */
  readPrdt(table: Uint8Array, entries: number): void {
    for (let i = 0; i < entries; i++) {
      const at = COMMAND_TABLE_PRDT + i * PRD_ENTRY_SIZE;
      this.addresses[i] = u32(table, at + PRD_ENTRY_DBA) + u32(table, at + PRD_ENTRY_DBAU) * 2 ** 32;
      this.lengths[i] = (u32(table, at + PRD_ENTRY_DW3) & PRD_ENTRY_DW3_DBC) + 1;
    }
    this.regions = entries;
  }

  /** Bytes the PRDT can take. */
  room(): number {
    let sum = 0;
    for (let i = 0; i < this.regions; i++) sum += this.lengths[i]!;
    return sum;
  }

  /** The staging buffer, grown to at least `bytes`. */
  stagingFor(bytes: number): Uint8Array {
    if (this.staging === null || this.staging.length < bytes) this.staging = new Uint8Array(bytes);
    return this.staging.subarray(0, bytes);
  }
}

/** A command that moves sectors between the disk and guest memory. */
type DataCommand = Extract<AtaCommand, { kind: "read" | "write" }>;

/** A little-endian dword of a structure in guest memory, at a generated field offset. */
function u32(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>>
    0
  );
}

/**
 * Reads that scatter over several PRD entries (Linux gives one per page), and writes, go through
 * a per-command staging buffer up to this size instead of a fresh array each; larger ones allocate.
 */
const STAGING_LIMIT = 256 * 1024;

/** The D2H register FIS of every successful non-queued command: always the same bytes. */
const COMPLETION_FIS = (() => {
  const fis = emptyRegD2HFis();
  fis.STATUS = DEVICE.readyStatus;
  fis.FLAGS |= REG_D2H_FIS_FLAGS_I;
  return encodeRegD2HFis(fis);
})();

/** The Set Device Bits FIS completing NCQ tag t, for every tag: built once, stored by copy. */
const SDB_FIS = Array.from({ length: 32 }, (_, tag) => {
  const fis = emptySetDeviceBitsFis();
  fis.STATUS = DEVICE.readyStatus & 0x77;
  fis.FLAGS |= SET_DEVICE_BITS_FIS_FLAGS_I;
  fis.ACTIVE = (1 << tag) >>> 0;
  return encodeSetDeviceBitsFis(fis);
});

/**
 * Whether clock.sleep(0) is exactly "continue on the next setImmediate turn" (RealClock's is),
 * so the controller may call setImmediate itself and skip a promise and two clock reads per
 * command. Any other clock (a VirtualClock decides when time moves) gets its own sleep(0).
 */
function sleepZeroIsSetImmediate(clock: Clock): boolean {
  return Object.getPrototypeOf(clock) === RealClock.prototype;
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
  /** Zero latency on a RealClock: a command continues on a plain setImmediate. */
  private readonly immediateStart: boolean;
  private readonly identify: Uint8Array[];
  private readonly pool: Command[] = [];
  /** PRDBC as bytes, for the one dword of the command header the HBA writes back. */
  private readonly prdbc = new Uint8Array(4);
  private line = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  onInterrupt: (level: boolean) => void;
  private readonly onStatus: (() => void) | undefined;
  /** Commands executed, for tests and benchmarks. */
  readonly stats = { commands: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };
  /**
   * Why the backing disk last failed (the guest only sees ATA status and error, as from a real
   * disk; the operator needs the reason).
   */
  lastDiskError: string | null = null;

  constructor(options: AhciControllerOptions) {
    if (options.disks.length === 0 || options.disks.length > PORT_COUNT) {
      throw new RangeError(`an AHCI controller has 1 to ${PORT_COUNT} ports, not ${options.disks.length}`);
    }
    this.memory = options.memory;
    this.clock = options.clock;
    this.latencyMs = options.latencyMs ?? 0;
    this.immediateStart = this.latencyMs === 0 && sleepZeroIsSetImmediate(this.clock);
    this.onInterrupt = options.onInterrupt ?? (() => {});
    this.onStatus = options.onStatus;
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
    port.running = 0;
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

  /**
   * Starts every issued slot that is not running yet, lowest first. Each is fetched now (header,
   * FIS and PRDT, as the HBA does on the PxCI write) and continues asynchronously.
   */
  private process(port: PortState): void {
    const r = this.registers;
    if (port.halted || (r.get(port.base + PORT_CMD) & PORT_CMD_ST) === 0 || !port.linkUp) return;
    // A snapshot: a command that fails while fetched halts the port, but the slots already
    // issued are still started (they finish silently, see complete()).
    let waiting = r.get(port.base + PORT_CI) & ~port.running;
    while (waiting !== 0) {
      const bit = waiting & -waiting;
      waiting ^= bit;
      const slot = 31 - Math.clz32(bit);
      port.running |= bit;
      this.inFlight++;
      const command = this.fetchCommand(port, slot);
      if (command === null) this.finished();
      else this.delay(command);
    }
  }

  private finished(): void {
    this.inFlight--;
    // A microtask later, and only if still idle: the interrupt handler of the command that just
    // finished (a microtask queued before this one) may issue the next command.
    if (this.inFlight === 0 && this.idleWaiters.length > 0) queueMicrotask(this.wakeIdleWaiters);
  }

  private readonly wakeIdleWaiters = (): void => {
    if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  };

  /**
   * Reads the command header and table of `slot` and decodes them. Returns the command to run,
   * or null when it already ended here: a pointer outside RAM, a bad FIS, a device control.
   */
  private fetchCommand(port: PortState, slot: number): Command | null {
    const r = this.registers;
    const clb = r.get(port.base + PORT_CLB) & PORT_CLB_CLB;
    const headerAddress =
      clb + r.get(port.base + PORT_CLBU) * 2 ** 32 + COMMAND_LIST_SLOT + slot * COMMAND_HEADER_SIZE;
    const header = this.dmaView(headerAddress, COMMAND_HEADER_SIZE);
    if (header === null) {
      this.hostBusError(port);
      return null;
    }
    const dw0 = u32(header, COMMAND_HEADER_DW0);
    const tableAddress = u32(header, COMMAND_HEADER_CTBA) + u32(header, COMMAND_HEADER_CTBAU) * 2 ** 32;
    const entries = (dw0 & COMMAND_HEADER_DW0_PRDTL) >>> COMMAND_HEADER_DW0_PRDTL_SHIFT;
    const table = this.dmaView(tableAddress, COMMAND_TABLE_PRDT + entries * PRD_ENTRY_SIZE);
    if (table === null) {
      this.hostBusError(port);
      return null;
    }
    const fis = decodeRegH2DFis(table, COMMAND_TABLE_CFIS);
    const command = this.pool.pop() ?? new Command(this.run);
    command.port = port;
    command.slot = slot;
    command.epoch = port.epoch;
    command.headerAddress = headerAddress;
    command.readPrdt(table, entries);
    this.stats.commands++;
    if (fis.TYPE !== REG_H2D_FIS_TYPE_VALUE) {
      this.fail(port, slot, null, ERROR_ABORT);
      this.recycle(command);
      return null;
    }
    if ((fis.FLAGS & REG_H2D_FIS_FLAGS_C) === 0) {
      this.deviceControl(port, slot, fis.CONTROL);
      this.recycle(command);
      return null;
    }
    command.ata = decodeAtaCommand(fis);
    return command;
  }

  /** The device latency: `run` follows on a later turn, never within the PxCI write. */
  private delay(command: Command): void {
    if (this.immediateStart) setImmediate(command.resume);
    else void this.clock.sleep(this.latencyMs).then(command.resume);
  }

  /** The command after its latency. Every path ends in retire(), synchronously or after I/O. */
  private readonly run = (command: Command): void => {
    const port = command.port;
    const slot = command.slot;
    const ata = command.ata;
    if (port.epoch !== command.epoch) return this.retire(command);
    switch (ata.kind) {
      case "read":
      case "write":
        void this.transfer(command, ata);
        return;
      case "flush":
        void this.flush(command);
        return;
      case "data_in":
        if (ata.name !== "IDENTIFY_DEVICE") this.fail(port, slot, null, ERROR_ABORT);
        else this.pioIn(port, slot, this.identify[port.index]!, command);
        break;
      case "nondata":
      case "trim":
        this.complete(port, slot, null, 0, command.headerAddress);
        break;
      case "other":
        this.fail(port, slot, null, ERROR_ABORT);
        break;
    }
    this.retire(command);
  };

  /** The command is over: its record goes back to the pool. */
  private retire(command: Command): void {
    this.recycle(command);
    this.finished();
  }

  private recycle(command: Command): void {
    this.pool.push(command);
  }

  private async flush(command: Command): Promise<void> {
    const port = command.port;
    try {
      try {
        await port.disk.flush();
      } catch (error) {
        // A disk that cannot make its cache durable fails the command, as a disk reports it.
        this.noteDiskError("flush", error);
        if (port.epoch === command.epoch) this.fail(port, command.slot, null, ERROR_ABORT);
        return;
      }
      if (port.epoch !== command.epoch) return;
      this.complete(port, command.slot, null, 0, command.headerAddress);
    } finally {
      this.retire(command);
    }
  }

  private async transfer(command: Command, ata: DataCommand): Promise<void> {
    try {
      await this.move(command, ata);
    } finally {
      this.retire(command);
    }
  }

  /** A DMA read or write: checks, the data between disk and guest memory, then completion. */
  private async move(command: Command, ata: DataCommand): Promise<void> {
    const { port, slot, epoch } = command;
    const tag = ata.queued ? (ata.tag ?? slot) : null;
    if (tag !== null) {
      // The device accepts a queued command at once: its slot frees, its tag stays active.
      this.registers.clearBits(port.base + PORT_CI, 1 << slot);
      port.running &= ~(1 << slot);
    }
    const bytes = ata.sectors * DEVICE.sectorSize;
    if (ata.lba + ata.sectors > port.disk.sectors) {
      return this.fail(port, slot, tag, ERROR_ABORT | ERROR_ID_NOT_FOUND);
    }
    if (command.room() < bytes) return this.fail(port, slot, tag, ERROR_ABORT);
    try {
      if (ata.kind === "read") {
        const direct = this.directTarget(command, bytes);
        if (direct !== null) {
          // The disk writes guest RAM itself, as a DMA engine does: no buffer in between. (So,
          // as with real DMA, a disk that fails midway or is slower than a port reset may have
          // written part of the buffer; on the staged path nothing lands then.)
          await port.disk.readInto!(ata.lba, ata.sectors, direct);
          if (port.epoch !== epoch) return;
        } else {
          const data = await this.readStaged(command, ata);
          if (port.epoch !== epoch) return;
          if (!this.scatter(data, command)) return this.hostBusError(port);
        }
        this.stats.bytesRead += bytes;
      } else {
        // As for reads: the disk takes the data from guest RAM itself when one PRD entry holds it all.
        const data = this.directSource(command, bytes) ?? this.gather(bytes, command);
        if (data === null) return this.hostBusError(port);
        await port.disk.write(ata.lba, data);
        if (port.epoch !== epoch) return;
        this.stats.bytesWritten += bytes;
      }
    } catch (error) {
      this.noteDiskError(`${ata.kind} at sector ${ata.lba}`, error);
      if (port.epoch !== epoch) return;
      return this.fail(port, slot, tag, ERROR_ABORT);
    }
    this.complete(port, slot, tag, bytes, command.headerAddress);
  }

  /**
   * Where a read can land without a copy: guest RAM of the first PRD entry, when it takes all
   * `bytes`, lies in RAM, and both the memory (liveView) and the disk (readInto) allow it.
   * Otherwise null, and the data takes the staged path with the same checks as always.
   */
  private directTarget(command: Command, bytes: number): Uint8Array | null {
    const memory = this.memory;
    if (memory.liveView === undefined || command.port.disk.readInto === undefined) return null;
    if (command.regions === 0 || command.lengths[0]! < bytes) return null;
    const address = command.addresses[0]!;
    return memory.isPhysicalRange(address, bytes) ? memory.liveView(address, bytes) : null;
  }

  /**
   * Where a write's data can be taken without a copy: guest RAM of the first PRD entry, when it
   * holds all `bytes` and lies in RAM (as a DMA engine reads it, while the command runs).
   * Otherwise null, and the data is gathered with the usual checks.
   */
  private directSource(command: Command, bytes: number): Uint8Array | null {
    const memory = this.memory;
    if (memory.liveView === undefined || command.regions === 0 || command.lengths[0]! < bytes) return null;
    const address = command.addresses[0]!;
    return memory.isPhysicalRange(address, bytes) ? memory.liveView(address, bytes) : null;
  }

  /** The sectors of a read, in the command's staging buffer when they fit, else fresh bytes. */
  private readStaged(command: Command, ata: DataCommand): Promise<Uint8Array> {
    const disk = command.port.disk;
    const bytes = ata.sectors * DEVICE.sectorSize;
    if (disk.readInto === undefined || bytes > STAGING_LIMIT) return disk.read(ata.lba, ata.sectors);
    const staging = command.stagingFor(bytes);
    return disk.readInto(ata.lba, ata.sectors, staging).then(() => staging);
  }

  private pioIn(port: PortState, slot: number, data: Uint8Array, command: Command): void {
    if (!this.scatter(data, command)) return this.hostBusError(port);
    const fis = emptyPioSetupFis();
    fis.FLAGS |= PIO_SETUP_FIS_FLAGS_D | PIO_SETUP_FIS_FLAGS_I;
    fis.STATUS = STATUS_PIO_DATA;
    fis.E_STATUS = DEVICE.readyStatus;
    fis.TRANSFER = data.length;
    this.storeFis(port, RECEIVED_FIS_PSFIS, encodePioSetupFis(fis));
    this.writeTransferred(command.headerAddress, data.length);
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
      this.storeFis(port, RECEIVED_FIS_RFIS, COMPLETION_FIS);
      this.finishSlot(port, slot);
      this.raise(port, PORT_IS_DHRS);
    } else {
      this.storeFis(port, RECEIVED_FIS_SDBFIS, SDB_FIS[tag]!);
      r.clearBits(port.base + PORT_SACT, 1 << tag);
      this.raise(port, PORT_IS_SDBS);
    }
  }

  private finishSlot(port: PortState, slot: number): void {
    port.running &= ~(1 << slot);
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

  private noteDiskError(what: string, error: unknown): void {
    this.lastDiskError = `${what}: ${error instanceof Error ? error.message : String(error)}`;
  }

  /** A pointer outside physical memory: host bus fatal error, the port halts. */
  private hostBusError(port: PortState): void {
    this.stats.errors++;
    port.halted = true;
    this.raise(port, PORT_IS_HBFS);
  }

  // ---- DMA ------------------------------------------------------------------------------------

  /**
   * Guest memory [address, address + length) to parse at once: a live view where the memory
   * has one (no copy), else a copy; null when it is not RAM (a host bus error).
   */
  private dmaView(address: number, length: number): Uint8Array | null {
    const memory = this.memory;
    try {
      return memory.liveView !== undefined ? memory.liveView(address, length) : memory.read(address, length);
    } catch {
      return null;
    }
  }

  private scatter(data: Uint8Array, command: Command): boolean {
    let at = 0;
    for (let i = 0; i < command.regions; i++) {
      if (at >= data.length) break;
      const address = command.addresses[i]!;
      const take = Math.min(command.lengths[i]!, data.length - at);
      if (!this.memory.isPhysicalRange(address, take)) return false;
      this.memory.write(address, data.subarray(at, at + take));
      at += take;
    }
    return true;
  }

  /**
   * The data of a write, gathered from its PRD entries into the command's staging buffer (or a
   * fresh one when large); null when an entry is not RAM. The disk has copied or written it by
   * the time its write resolves, so the buffer is free again when the command retires.
   */
  private gather(bytes: number, command: Command): Uint8Array | null {
    const memory = this.memory;
    const out = bytes <= STAGING_LIMIT ? command.stagingFor(bytes) : new Uint8Array(bytes);
    let at = 0;
    for (let i = 0; i < command.regions; i++) {
      if (at >= bytes) break;
      const address = command.addresses[i]!;
      const take = Math.min(command.lengths[i]!, bytes - at);
      if (!memory.isPhysicalRange(address, take)) return null;
      out.set(
        memory.liveView !== undefined ? memory.liveView(address, take) : memory.read(address, take),
        at,
      );
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

  /** PRDBC, the one dword of the command header the HBA writes back (the rest stays untouched). */
  private writeTransferred(headerAddress: number, bytes: number): void {
    if (!this.memory.isPhysicalRange(headerAddress, COMMAND_HEADER_SIZE)) return;
    const prdbc = this.prdbc;
    prdbc[0] = bytes & 0xff;
    prdbc[1] = (bytes >>> 8) & 0xff;
    prdbc[2] = (bytes >>> 16) & 0xff;
    prdbc[3] = (bytes >>> 24) & 0xff;
    this.memory.write(headerAddress + COMMAND_HEADER_PRDBC, prdbc);
  }

  // ---- interrupts -----------------------------------------------------------------------------

  private raise(port: PortState, bits: number): void {
    this.registers.setBits(port.base + PORT_IS, bits);
    this.updateInterrupt();
    this.onStatus?.();
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
