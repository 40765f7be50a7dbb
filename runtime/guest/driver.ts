import {
  type AtaCommandName,
  COMMAND_HEADER_DW0_CFL,
  COMMAND_HEADER_DW0_CFL_SHIFT,
  COMMAND_HEADER_DW0_PRDTL_SHIFT,
  COMMAND_HEADER_DW0_W,
  COMMAND_HEADER_SIZE,
  COMMAND_LIST_SIZE,
  COMMAND_TABLE_PRDT,
  type CommandHeader,
  DetectionControl,
  DeviceDetection,
  decodeRegD2HFis,
  encodeAtaCommand,
  encodeCommandHeader,
  encodePrdEntry,
  encodeRegH2DFis,
  HOST_BASE,
  HOST_CAP,
  HOST_CAP_NCS,
  HOST_CAP_NCS_SHIFT,
  HOST_CAP_SCLO,
  HOST_CAP_SNCQ,
  HOST_GHC,
  HOST_GHC_AE,
  HOST_GHC_HR,
  HOST_GHC_IE,
  HOST_IS,
  HOST_PI,
  HOST_VS,
  PORT_CI,
  PORT_CLB,
  PORT_CLBU,
  PORT_CMD,
  PORT_CMD_CLO,
  PORT_CMD_CR,
  PORT_CMD_FR,
  PORT_CMD_FRE,
  PORT_CMD_ST,
  PORT_FB,
  PORT_FBU,
  PORT_IE,
  PORT_IE_DHRE,
  PORT_IE_DPE,
  PORT_IE_DSE,
  PORT_IE_HBDE,
  PORT_IE_HBFE,
  PORT_IE_IFE,
  PORT_IE_PCE,
  PORT_IE_PRCE,
  PORT_IE_PSE,
  PORT_IE_SDBE,
  PORT_IE_TFEE,
  PORT_IE_UFE,
  PORT_IS,
  PORT_IS_HBDS,
  PORT_IS_HBFS,
  PORT_IS_IFS,
  PORT_IS_IPMS,
  PORT_IS_OFS,
  PORT_IS_PCS,
  PORT_IS_PRCS,
  PORT_IS_TFES,
  PORT_IS_UFS,
  PORT_SACT,
  PORT_SCTL,
  PORT_SCTL_DET,
  PORT_SCTL_IPM,
  PORT_SCTL_IPM_SHIFT,
  PORT_SERR,
  PORT_SIG,
  PORT_SSTS,
  PORT_SSTS_DET,
  PORT_TFD,
  PORT_TFD_ERR,
  PORT_TFD_ERR_SHIFT,
  PORT_TFD_STS,
  PRD_ENTRY_DW3_DBC,
  PRD_ENTRY_SIZE,
  type PrdEntry,
  portOffset,
  RECEIVED_FIS_RFIS,
  RECEIVED_FIS_SIZE,
  REG_D2H_FIS_SIZE,
  REG_H2D_FIS_SIZE,
} from "../../generated/ahci/index.ts";
import type { Clock } from "../vmx/clock.ts";
import type { PhysicalMemory } from "../vmx/memory.ts";
import { GuestAllocator } from "./allocator.ts";
import { type DiskIdentity, parseIdentify } from "./identify.ts";

/**
 * What the guest driver sees of the machine: its RAM, the AHCI register window at ABAR (loads
 * and stores, possibly trapped by the VMM), its interrupt line and a clock. A Machine
 * (runtime/machine.ts) is one.
 */
export interface GuestPlatform {
  readonly memory: PhysicalMemory & { readonly bytes?: Uint8Array };
  readonly abar: number;
  readonly guestRamBytes: number;
  readonly clock: Clock;
  mmioRead(addr: number, size: 1 | 2 | 4): number;
  mmioWrite(addr: number, size: 1 | 2 | 4, value: number): void;
  readonly irqPending: boolean;
  readonly host: { onGuestIrq(listener: (level: boolean) => void): () => void };
}

export interface AhciGuestDriverOptions {
  /** Port to drive (default: the lowest implemented port). */
  readonly port?: number;
  /** Interrupt-driven completions (default). false: GHC.IE stays off and the driver polls. */
  readonly interrupts?: boolean;
  /** Poll interval in clock ms with interrupts off (default 0 on a real clock, 0.01 on a virtual one). */
  readonly pollIntervalMs?: number;
  /** Commands in flight at most (1..32); default: what the device and HBA offer. */
  readonly queueDepth?: number;
  /** Use READ/WRITE FPDMA QUEUED when the device and HBA support it (default true). */
  readonly ncq?: boolean;
  /** Bytes of the bounce buffer of each tag (a multiple of 512; default 256 KiB, or what fits). */
  readonly bounceBytes?: number;
  /** Guest RAM the driver allocates from: [memoryBase, memoryEnd) (default [1 MiB, RAM end)). */
  readonly memoryBase?: number;
  readonly memoryEnd?: number;
  /** Reset the HBA first (default true). false: bring up only this port of an HBA already set up. */
  readonly resetHba?: boolean;
  /** Limit for each register wait during start-up and recovery, in clock ms (default 1000). */
  readonly timeoutMs?: number;
  /**
   * Interrupt mitigation (default true): with more than one command in flight, the handler runs
   * one event-loop turn after the line rises, so one pass reaps every tag that finished in that
   * turn (one IS/PxIS/SACT round instead of one per command). With one command in flight, or
   * with false, the interrupt is taken at once (a microtask after the device's store).
   */
  readonly coalesceInterrupts?: boolean;
  /**
   * Doorbell batching (default true): commands built in the same burst (one handler pass, one
   * caller's loop) are issued with one PxSACT and one PxCI store carrying all their bits, at the
   * end of the burst (a microtask). false: one PxSACT + PxCI pair per command, as libahci does.
   */
  readonly batchDoorbells?: boolean;
}

/** Counters the driver keeps (cheap increments on the hot path). */
export interface DriverStats {
  commands: number;
  queuedCommands: number;
  completions: number;
  interrupts: number;
  spuriousInterrupts: number;
  polls: number;
  mmioReads: number;
  mmioWrites: number;
  /** Most commands the driver had on the device at once. */
  maxInFlight: number;
  errors: number;
  recoveries: number;
  retries: number;
  bytesRead: number;
  bytesWritten: number;
}

/** Details of a failed command, from the registers and the received FIS as the driver saw them. */
export interface CommandFailure {
  readonly command: AtaCommandName;
  readonly lba: number;
  readonly sectors: number;
  readonly tag: number;
  /** PxIS when the error interrupt came. */
  readonly portIs: number;
  /** PxTFD: ATA error in bits 15:8, status in 7:0. */
  readonly taskFile: number;
  /** ATA status and error: from PxTFD, or from the received D2H register FIS when PxTFD shows none. */
  readonly status: number;
  readonly error: number;
  /** Status and error of the D2H register FIS in the received-FIS area. */
  readonly fisStatus: number;
  readonly fisError: number;
  readonly serr: number;
}

/** A command the device (or the HBA) failed. */
export class AhciCommandError extends Error {
  constructor(
    message: string,
    readonly failure: CommandFailure,
  ) {
    super(message);
    this.name = "AhciCommandError";
  }
}

/** The driver could not bring the port up, or the port died. */
export class AhciDriverError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AhciDriverError";
  }
}

const SECTOR = 512;
/** A PRD entry covers at most 4 MiB (DBC is 22 bits of byte count minus one). */
export const MAX_PRD_BYTES = 4 * 1024 * 1024;
/** PRD entries per command table. */
export const MAX_PRDT_ENTRIES = 8;
/** Largest command the driver builds: 32 MiB - 4 KiB, fits 8 PRDs, keeps split pieces 4 KiB aligned. */
export const MAX_COMMAND_SECTORS = 65528;
const TABLE_BYTES = COMMAND_TABLE_PRDT + MAX_PRDT_ENTRIES * PRD_ENTRY_SIZE;
/** 256 KiB per tag: 8 MiB of guest RAM for 32 tags; larger requests become several commands. */
const DEFAULT_BOUNCE_BYTES = 256 * 1024;
const PAGE = 4096;

/** ATA status and error bits (ATA8-ACS). */
const ATA_BUSY = 0x80;
const ATA_DRQ = 0x08;
const ATA_ERR = 0x01;
const STATUS_NAMES: [number, string][] = [
  [0x80, "BSY"],
  [0x40, "DRDY"],
  [0x20, "DF"],
  [0x10, "DSC"],
  [0x08, "DRQ"],
  [0x04, "CORR"],
  [0x02, "IDX"],
  [0x01, "ERR"],
];
const ERROR_NAMES: [number, string][] = [
  [0x80, "ICRC"],
  [0x40, "UNC"],
  [0x20, "MC"],
  [0x10, "IDNF"],
  [0x08, "MCR"],
  [0x04, "ABRT"],
  [0x02, "NM"],
  [0x01, "AMNF"],
];
const SIGNATURE_ATA = 0x00000101;
/** SET FEATURES subcommand: set transfer mode; UDMA modes are 0x40 + mode. */
const SETFEATURES_XFER = 0x03;

/** libahci's DEF_PORT_IRQ: errors (freeze bits, TFES, HBDS) and the FIS interrupts. */
export const DEFAULT_PORT_IE =
  (PORT_IE_TFEE |
    PORT_IE_HBFE |
    PORT_IE_HBDE |
    PORT_IE_IFE |
    PORT_IE_PRCE |
    PORT_IE_PCE |
    PORT_IE_DPE |
    PORT_IE_UFE |
    PORT_IE_SDBE |
    PORT_IE_DSE |
    PORT_IE_PSE |
    PORT_IE_DHRE) >>>
  0;
/** PxIS bits that stop normal completion processing. */
const PORT_IS_ERRORS =
  (PORT_IS_TFES |
    PORT_IS_HBFS |
    PORT_IS_HBDS |
    PORT_IS_IFS |
    PORT_IS_OFS |
    PORT_IS_IPMS |
    PORT_IS_PCS |
    PORT_IS_PRCS |
    PORT_IS_UFS) >>>
  0;

const KIND_READ = 0;
const KIND_WRITE = 1;
const KIND_NODATA = 2;
const KIND_PIO_IN = 3;

const STATE_INIT = 0;
const STATE_READY = 1;
const STATE_RECOVERING = 2;
const STATE_DEAD = 3;

/** Consumes read data in place (a view of guest RAM, valid only during the call). */
export type Consumer = (view: Uint8Array, byteOffset: number) => void;
/** Fills write data in place (a view of guest RAM, valid only during the call). */
export type Producer = (view: Uint8Array, byteOffset: number) => void;

/** One ATA command through one slot. */
class Command {
  tag = -1;
  seq = 0;
  /** Retry alone after an NCQ error (nothing else runs beside it). */
  solo = false;
  retried = false;
  features = -1;
  count = -1;
  /** Read data: copied into `into` at `intoOffset`, handed to `consume`, or returned as a fresh copy. */
  into: Uint8Array | null = null;
  intoOffset = 0;
  consume: Consumer | null = null;
  /** Write data: copied from `data`, or produced in place by `produce`. */
  data: Uint8Array | null = null;
  produce: Producer | null = null;
  /** Byte offset of this piece within the caller's request (split requests). */
  requestOffset = 0;
  resolve: (value: Uint8Array | undefined) => void = noop;
  reject: (error: unknown) => void = noop;

  constructor(
    readonly name: AtaCommandName,
    readonly kind: number,
    readonly queued: boolean,
    readonly lba: number,
    readonly sectors: number,
    /** Guest-physical DMA target; -1: the tag's bounce buffer. */
    readonly guestAddress: number,
  ) {}

  get bytes(): number {
    return this.kind === KIND_PIO_IN ? 512 : this.sectors * SECTOR;
  }
}

function noop(): void {}

function hex(value: number, digits = 8): string {
  return `0x${(value >>> 0).toString(16).padStart(digits, "0")}`;
}

function bitNames(value: number, names: [number, string][]): string {
  const set = names.filter(([bit]) => (value & bit) !== 0).map(([, name]) => name);
  return set.length > 0 ? set.join(" ") : "none";
}

/**
 * A small AHCI driver for the guest, shaped after Linux libahci: it touches the controller only
 * through loads and stores to ABAR and through its own RAM, and takes completions from the
 * interrupt (or polls). One instance drives one port; reads and writes are queued with NCQ.
 */
export class AhciGuestDriver {
  readonly port: number;
  readonly clock: Clock;
  readonly stats: DriverStats = {
    commands: 0,
    queuedCommands: 0,
    completions: 0,
    interrupts: 0,
    spuriousInterrupts: 0,
    polls: 0,
    mmioReads: 0,
    mmioWrites: 0,
    maxInFlight: 0,
    errors: 0,
    recoveries: 0,
    retries: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };
  /** Guest RAM allocator; callers may take buffers from it for readGuest/writeGuest. */
  readonly allocator: GuestAllocator;

  readonly #platform: GuestPlatform;
  readonly #memory: GuestPlatform["memory"];
  readonly #ram: Uint8Array | null;
  readonly #options: AhciGuestDriverOptions;
  readonly #interrupts: boolean;
  readonly #coalesce: boolean;
  readonly #batch: boolean;
  readonly #pollMs: number;
  readonly #timeoutMs: number;
  readonly #abar: number;
  /** Absolute addresses of this port's hot registers, and its bit in IS. */
  readonly #regs: {
    readonly is: number;
    readonly ci: number;
    readonly sact: number;
    readonly cmd: number;
    readonly bit: number;
  };

  #state = STATE_INIT;
  #cap = 0;
  #version = 0;
  #identity: DiskIdentity | null = null;
  #ncq = false;
  #depth = 1;
  #slots = 1;
  #maxSectors = 1;
  #bounceBytes = 0;
  #commandList = 0;
  #fisArea = 0;
  #tables = 0;
  #bounce = 0;
  #identifyBuffer = 0;
  #readName: AtaCommandName = "READ_FPDMA_QUEUED";
  #writeName: AtaCommandName = "WRITE_FPDMA_QUEUED";

  /** Free tags (bit set = free). */
  #free = 0;
  readonly #active: (Command | undefined)[] = new Array(32).fill(undefined);
  #activeQueued = 0;
  #activeOther = 0;
  #inFlight = 0;
  #soloActive = false;
  #queue: (Command | undefined)[] = [];
  #head = 0;
  #seq = 0;
  #idleWaiters: (() => void)[] = [];
  #irqScheduled = false;
  /** Built but not yet issued: the next doorbell's PxSACT and PxCI bits. */
  #ringSact = 0;
  #ringCi = 0;
  #ringScheduled = false;
  #polling = false;
  #unsubscribe: (() => void) | null = null;
  #deadReason: Error | null = null;

  readonly #tableScratch = new Uint8Array(TABLE_BYTES);
  /** The scratch table up to the end of a PRDT of n entries, for n = 0..MAX_PRDT_ENTRIES. */
  readonly #tableViews = Array.from({ length: MAX_PRDT_ENTRIES + 1 }, (_, n) =>
    this.#tableScratch.subarray(0, COMMAND_TABLE_PRDT + n * PRD_ENTRY_SIZE),
  );
  readonly #headerScratch = new Uint8Array(COMMAND_HEADER_SIZE);
  readonly #header: CommandHeader = { DW0: 0, PRDBC: 0, CTBA: 0, CTBAU: 0 };
  readonly #prd: PrdEntry = { DBA: 0, DBAU: 0, DW3: 0 };

  private constructor(platform: GuestPlatform, options: AhciGuestDriverOptions) {
    this.#platform = platform;
    this.#memory = platform.memory;
    this.#ram = platform.memory.bytes instanceof Uint8Array ? platform.memory.bytes : null;
    this.#options = options;
    this.clock = platform.clock;
    this.#interrupts = options.interrupts ?? true;
    this.#coalesce = options.coalesceInterrupts ?? true;
    this.#batch = options.batchDoorbells ?? true;
    this.#pollMs = options.pollIntervalMs ?? (platform.clock.virtual ? 0.01 : 0);
    this.#timeoutMs = options.timeoutMs ?? 1000;
    this.#abar = platform.abar;
    const base = options.memoryBase ?? 1024 * 1024;
    const end = options.memoryEnd ?? platform.guestRamBytes;
    this.allocator = new GuestAllocator(base, end);
    const port = options.port ?? 0;
    this.port = port;
    const abar = platform.abar;
    this.#regs = {
      is: abar + portOffset(port, PORT_IS),
      ci: abar + portOffset(port, PORT_CI),
      sact: abar + portOffset(port, PORT_SACT),
      cmd: abar + portOffset(port, PORT_CMD),
      bit: (1 << port) >>> 0,
    };
  }

  /** Brings the HBA and one port up (libahci order), IDENTIFYs the disk and returns the driver. */
  static async open(platform: GuestPlatform, options: AhciGuestDriverOptions = {}): Promise<AhciGuestDriver> {
    // Read PI first to settle the port, then build the driver with its register addresses fixed.
    const pi = platform.mmioRead(platform.abar + HOST_BASE + HOST_PI, 4) >>> 0;
    let port = options.port;
    if (port === undefined) {
      if (pi === 0) throw new AhciDriverError("the HBA implements no ports (PI = 0)");
      port = 31 - Math.clz32(pi & -pi);
    }
    if (!Number.isInteger(port) || port < 0 || port > 31 || ((pi >>> port) & 1) === 0) {
      throw new AhciDriverError(`port ${port} is not implemented by the HBA (PI = ${hex(pi)})`);
    }
    const driver = new AhciGuestDriver(platform, { ...options, port });
    try {
      await driver.#init(pi);
    } catch (error) {
      driver.#detach();
      throw error;
    }
    return driver;
  }

  // ---- what the driver found ------------------------------------------------------------------

  /** The disk's IDENTIFY data, parsed. */
  get identity(): DiskIdentity {
    if (this.#identity === null) throw new AhciDriverError("the disk has not been identified yet");
    return this.#identity;
  }

  /** Disk size in sectors. */
  get sectors(): number {
    return this.identity.sectors;
  }

  /** Commands the driver keeps in flight at most. */
  get queueDepth(): number {
    return this.#depth;
  }

  get ncq(): boolean {
    return this.#ncq;
  }

  /** HBA capabilities (CAP) and version (VS) as read at start-up. */
  get capabilities(): { readonly cap: number; readonly version: number } {
    return { cap: this.#cap, version: this.#version };
  }

  /** Largest command through a bounce buffer, in sectors (bigger requests are split). */
  get maxTransferSectors(): number {
    return Math.min(this.#maxSectors, this.#bounceBytes / SECTOR);
  }

  /** Commands on the device now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Commands waiting for a tag. */
  get waiting(): number {
    return this.#queue.length - this.#head;
  }

  // ---- public I/O -----------------------------------------------------------------------------

  /** Reads `sectors` sectors at `lba` into a new array. */
  read(lba: number, sectors: number): Promise<Uint8Array> {
    const bad = this.#checkRequest(lba, sectors);
    if (bad) return Promise.reject(bad);
    const max = this.maxTransferSectors;
    if (sectors <= max) {
      return this.#submit(
        new Command(this.#readName, KIND_READ, this.#ncq, lba, sectors, -1),
      ) as Promise<Uint8Array>;
    }
    const out = new Uint8Array(sectors * SECTOR);
    return this.readInto(lba, out).then(() => out);
  }

  /** Reads target.length bytes (whole sectors) at `lba` into `target`. */
  readInto(lba: number, target: Uint8Array): Promise<void> {
    if (target.length % SECTOR !== 0) {
      return Promise.reject(new RangeError(`readInto: ${target.length} bytes is not whole sectors`));
    }
    const sectors = target.length / SECTOR;
    const bad = this.#checkRequest(lba, sectors);
    if (bad) return Promise.reject(bad);
    return this.#split(lba, sectors, this.maxTransferSectors, (at, n, offset) => {
      const command = new Command(this.#readName, KIND_READ, this.#ncq, at, n, -1);
      command.into = target;
      command.intoOffset = offset;
      return command;
    });
  }

  /**
   * Reads without a copy: `consume` gets a view of the bounce buffer in guest RAM (valid only
   * during the call) and the byte offset of that piece in the request. Large requests come in
   * pieces, in completion order.
   */
  readWith(lba: number, sectors: number, consume: Consumer): Promise<void> {
    const bad = this.#checkRequest(lba, sectors);
    if (bad) return Promise.reject(bad);
    return this.#split(lba, sectors, this.maxTransferSectors, (at, n, offset) => {
      const command = new Command(this.#readName, KIND_READ, this.#ncq, at, n, -1);
      command.consume = consume;
      command.requestOffset = offset;
      return command;
    });
  }

  /** DMA straight into guest RAM at `guestAddress` (no bounce buffer, no copy). */
  readGuest(lba: number, sectors: number, guestAddress: number): Promise<void> {
    const bad = this.#checkRequest(lba, sectors) ?? this.#checkGuest(guestAddress, sectors * SECTOR);
    if (bad) return Promise.reject(bad);
    return this.#split(
      lba,
      sectors,
      this.#maxSectors,
      (at, n, offset) => new Command(this.#readName, KIND_READ, this.#ncq, at, n, guestAddress + offset),
    );
  }

  /** Writes `data` (whole sectors) at `lba`. Do not change `data` until the promise settles. */
  write(lba: number, data: Uint8Array): Promise<void> {
    if (data.length % SECTOR !== 0) {
      return Promise.reject(new RangeError(`write: ${data.length} bytes is not whole sectors`));
    }
    const sectors = data.length / SECTOR;
    const bad = this.#checkRequest(lba, sectors);
    if (bad) return Promise.reject(bad);
    return this.#split(lba, sectors, this.maxTransferSectors, (at, n, offset) => {
      const command = new Command(this.#writeName, KIND_WRITE, this.#ncq, at, n, -1);
      command.data = data;
      command.requestOffset = offset;
      return command;
    });
  }

  /** Writes without a copy: `produce` fills the bounce buffer in guest RAM just before issue. */
  writeWith(lba: number, sectors: number, produce: Producer): Promise<void> {
    const bad = this.#checkRequest(lba, sectors);
    if (bad) return Promise.reject(bad);
    return this.#split(lba, sectors, this.maxTransferSectors, (at, n, offset) => {
      const command = new Command(this.#writeName, KIND_WRITE, this.#ncq, at, n, -1);
      command.produce = produce;
      command.requestOffset = offset;
      return command;
    });
  }

  /** DMA straight from guest RAM at `guestAddress`. */
  writeGuest(lba: number, sectors: number, guestAddress: number): Promise<void> {
    const bad = this.#checkRequest(lba, sectors) ?? this.#checkGuest(guestAddress, sectors * SECTOR);
    if (bad) return Promise.reject(bad);
    return this.#split(
      lba,
      sectors,
      this.#maxSectors,
      (at, n, offset) => new Command(this.#writeName, KIND_WRITE, this.#ncq, at, n, guestAddress + offset),
    );
  }

  /**
   * FLUSH CACHE EXT, non-queued: as libata does, it waits until every command submitted before
   * it has completed, and commands submitted after it wait for it.
   */
  flush(): Promise<void> {
    const name: AtaCommandName = this.#identity?.flushExt === false ? "FLUSH_CACHE" : "FLUSH_CACHE_EXT";
    return this.#submit(new Command(name, KIND_NODATA, false, 0, 0, -1)) as Promise<unknown> as Promise<void>;
  }

  /** Resolves when nothing is queued or in flight. */
  idle(): Promise<void> {
    if (this.#inFlight === 0 && this.waiting === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Waits for the queue to drain, stops the port's engines and lets go of the interrupt. */
  async close(): Promise<void> {
    if (this.#state === STATE_DEAD && this.#unsubscribe === null) return;
    await this.idle();
    if (this.#state !== STATE_DEAD) {
      this.#state = STATE_DEAD;
      this.#deadReason = new AhciDriverError(`AHCI port ${this.port}: driver closed`);
      this.#w(this.#regOff(PORT_IE), 0);
      try {
        await this.#stopEngine();
        await this.#stopFisRx();
      } catch {
        // The port is going away anyway.
      }
    }
    this.#detach();
  }

  // ---- start-up (libahci order) ---------------------------------------------------------------

  async #init(pi: number): Promise<void> {
    const host = this.#abar + HOST_BASE;
    // ahci_save_initial_config
    this.#cap = this.#r(host + HOST_CAP);
    this.#r(host + HOST_GHC);
    this.#version = this.#r(host + HOST_VS);
    this.#slots = ((this.#cap & HOST_CAP_NCS) >>> HOST_CAP_NCS_SHIFT) + 1;

    if (this.#options.resetHba ?? true) {
      // ahci_reset_controller: AE first, then GHC.HR, which the HBA clears when done.
      let ghc = this.#r(host + HOST_GHC);
      if ((ghc & HOST_GHC_AE) === 0) {
        this.#w(host + HOST_GHC, (ghc | HOST_GHC_AE) >>> 0);
        ghc = this.#r(host + HOST_GHC);
      }
      this.#w(host + HOST_GHC, (ghc | HOST_GHC_HR) >>> 0);
      await this.#waitFor(
        "GHC.HR to clear after the HBA reset",
        () => (this.#r(host + HOST_GHC) & HOST_GHC_HR) === 0,
      );
      // ahci_enable_ahci, ahci_restore_initial_config
      this.#w(host + HOST_GHC, HOST_GHC_AE);
      this.#w(host + HOST_CAP, this.#cap);
      this.#w(host + HOST_PI, pi);
      this.#r(host + HOST_PI);
      // ahci_port_init for every implemented port: engines off, errors and status cleared.
      for (let p = 0; p < 32; p++) {
        if (((pi >>> p) & 1) === 0 || p === this.port) continue;
        await this.#quiescePort(p);
      }
    } else {
      const ghc = this.#r(host + HOST_GHC);
      if ((ghc & HOST_GHC_AE) === 0) this.#w(host + HOST_GHC, (ghc | HOST_GHC_AE) >>> 0);
    }
    await this.#quiescePort(this.port);

    // ahci_port_start: command list, received-FIS area, command tables, bounce buffers.
    this.#allocate();
    this.#w(this.#regOff(PORT_CLBU), Math.floor(this.#commandList / 2 ** 32));
    this.#w(this.#regOff(PORT_CLB), this.#commandList % 2 ** 32);
    this.#w(this.#regOff(PORT_FBU), Math.floor(this.#fisArea / 2 ** 32));
    this.#w(this.#regOff(PORT_FB), this.#fisArea % 2 ** 32);
    this.#clearErrors();
    // ahci_start_fis_rx
    this.#w(this.#regs.cmd, (this.#r(this.#regs.cmd) | PORT_CMD_FRE) >>> 0);
    await this.#waitFor("PxCMD.FR to set", () => (this.#r(this.#regs.cmd) & PORT_CMD_FR) !== 0);
    // Interrupts: the port's mask, then the HBA's gate.
    this.#unsubscribe = this.#platform.host.onGuestIrq(this.#onIrq);
    this.#w(this.#regOff(PORT_IE), DEFAULT_PORT_IE);
    if (this.#interrupts) this.#w(host + HOST_GHC, (this.#r(host + HOST_GHC) | HOST_GHC_IE) >>> 0);

    // sata_link_hardreset: COMRESET (SCTL.DET = 1, at least 1 ms, then 0), wait for the link.
    const sctl = this.#r(this.#regOff(PORT_SCTL)) & ~(PORT_SCTL_DET | PORT_SCTL_IPM);
    const noPowerStates = 3 << PORT_SCTL_IPM_SHIFT;
    this.#w(this.#regOff(PORT_SCTL), (sctl | noPowerStates | DetectionControl.COMRESET) >>> 0);
    await this.clock.sleep(1);
    this.#w(this.#regOff(PORT_SCTL), (sctl | noPowerStates | DetectionControl.NO_ACTION) >>> 0);
    await this.#waitFor(
      `a device on port ${this.port} (PxSSTS.DET = 3)`,
      () => (this.#r(this.#regOff(PORT_SSTS)) & PORT_SSTS_DET) === DeviceDetection.ESTABLISHED,
    );
    this.#clearSerr();
    await this.#waitFor(
      "the device to become ready (PxTFD BSY and DRQ clear)",
      () => (this.#r(this.#regOff(PORT_TFD)) & (ATA_BUSY | ATA_DRQ)) === 0,
    );
    const signature = this.#r(this.#regOff(PORT_SIG));
    if (signature !== SIGNATURE_ATA) {
      throw new AhciDriverError(
        `port ${this.port}: device signature ${hex(signature)} is not an ATA disk (${hex(SIGNATURE_ATA)})`,
      );
    }
    // Thaw: stale status from the reset goes, then the engine starts.
    this.#clearErrors();
    this.#w(this.#regs.cmd, (this.#r(this.#regs.cmd) | PORT_CMD_ST) >>> 0);

    // The device: IDENTIFY, SET FEATURES (transfer mode), IDENTIFY again (ata_dev_revalidate).
    this.#state = STATE_READY;
    this.#free = this.#slots === 32 ? 0xffffffff | 0 : (1 << this.#slots) - 1;
    let identity = parseIdentify(await this.#identify());
    if (!identity.checksumOk)
      throw new AhciDriverError(`port ${this.port}: IDENTIFY data has a bad checksum`);
    const setFeatures = new Command("SET_FEATURES", KIND_NODATA, false, 0, 0, -1);
    setFeatures.features = SETFEATURES_XFER;
    setFeatures.count = identity.udmaMax >= 0 ? 0x40 | identity.udmaMax : 0x0c;
    await this.#submit(setFeatures);
    identity = parseIdentify(await this.#identify());
    this.#identity = identity;

    this.#ncq = (this.#options.ncq ?? true) && identity.ncq && (this.#cap & HOST_CAP_SNCQ) !== 0;
    if (this.#ncq) {
      const wanted = this.#options.queueDepth ?? 32;
      if (!Number.isInteger(wanted) || wanted < 1 || wanted > 32) {
        throw new AhciDriverError(`queue depth ${wanted} is not between 1 and 32`);
      }
      this.#depth = Math.min(wanted, this.#slots, identity.ncqDepth);
      this.#readName = "READ_FPDMA_QUEUED";
      this.#writeName = "WRITE_FPDMA_QUEUED";
      this.#maxSectors = MAX_COMMAND_SECTORS;
    } else {
      this.#depth = 1;
      this.#readName = identity.lba48 ? "READ_DMA_EXT" : "READ_DMA";
      this.#writeName = identity.lba48 ? "WRITE_DMA_EXT" : "WRITE_DMA";
      this.#maxSectors = identity.lba48 ? MAX_COMMAND_SECTORS : 256;
    }
  }

  #identify(): Promise<Uint8Array> {
    return this.#submit(
      new Command("IDENTIFY_DEVICE", KIND_PIO_IN, false, 0, 0, this.#identifyBuffer),
    ) as Promise<Uint8Array>;
  }

  #allocate(): void {
    const a = this.allocator;
    this.#commandList = a.alloc(COMMAND_LIST_SIZE, 1024, "command list");
    this.#fisArea = a.alloc(RECEIVED_FIS_SIZE, 256, "received-FIS area");
    this.#tables = a.alloc(TABLE_BYTES * this.#slots, 128, "command tables");
    this.#identifyBuffer = a.alloc(512, 512, "IDENTIFY buffer");
    const mem = this.#memory;
    mem.fill(this.#commandList, COMMAND_LIST_SIZE, 0);
    mem.fill(this.#fisArea, RECEIVED_FIS_SIZE, 0);
    mem.fill(this.#tables, TABLE_BYTES * this.#slots, 0);
    let bounce = this.#options.bounceBytes;
    if (bounce === undefined) {
      const fits = Math.floor((a.free - PAGE) / this.#slots / PAGE) * PAGE;
      bounce = Math.min(DEFAULT_BOUNCE_BYTES, fits);
      if (bounce < PAGE) {
        throw new AhciDriverError(
          `guest RAM too small for ${this.#slots} bounce buffers (${a.free} bytes free above the driver's tables)`,
        );
      }
    }
    if (!Number.isInteger(bounce) || bounce < SECTOR || bounce % SECTOR !== 0) {
      throw new AhciDriverError(`bounce buffer size ${bounce} is not a positive multiple of 512`);
    }
    this.#bounceBytes = Math.min(bounce, MAX_COMMAND_SECTORS * SECTOR);
    this.#bounce = a.alloc(this.#bounceBytes * this.#slots, PAGE, "bounce buffers");
  }

  /** ahci_port_init: engine and FIS reception off, SERR and PxIS cleared, the IS bit cleared. */
  async #quiescePort(port: number): Promise<void> {
    const cmd = this.#abar + portOffset(port, PORT_CMD);
    await this.#stopEngineAt(cmd);
    await this.#stopFisRxAt(cmd);
    const serr = this.#abar + portOffset(port, PORT_SERR);
    this.#w(serr, this.#r(serr));
    const is = this.#abar + portOffset(port, PORT_IS);
    const status = this.#r(is);
    if (status !== 0) this.#w(is, status);
    this.#w(this.#abar + HOST_BASE + HOST_IS, (1 << port) >>> 0);
  }

  // ---- register helpers -----------------------------------------------------------------------

  #r(addr: number): number {
    this.stats.mmioReads++;
    return this.#platform.mmioRead(addr, 4) >>> 0;
  }

  #w(addr: number, value: number): void {
    this.stats.mmioWrites++;
    this.#platform.mmioWrite(addr, 4, value >>> 0);
  }

  #regOff(register: number): number {
    return this.#abar + portOffset(this.port, register);
  }

  async #waitFor(what: string, done: () => boolean): Promise<void> {
    const start = this.clock.now();
    for (let attempt = 0; ; attempt++) {
      if (done()) return;
      if (this.clock.now() - start >= this.#timeoutMs) {
        throw new AhciDriverError(
          `port ${this.port}: timed out after ${this.#timeoutMs} ms waiting for ${what}`,
        );
      }
      await this.clock.sleep(attempt < 10 ? 0 : 1);
    }
  }

  async #stopEngineAt(cmd: number): Promise<void> {
    const value = this.#r(cmd);
    if ((value & (PORT_CMD_ST | PORT_CMD_CR)) === 0) return;
    this.#w(cmd, (value & ~PORT_CMD_ST) >>> 0);
    await this.#waitFor("PxCMD.CR to clear", () => (this.#r(cmd) & PORT_CMD_CR) === 0);
  }

  async #stopFisRxAt(cmd: number): Promise<void> {
    const value = this.#r(cmd);
    if ((value & (PORT_CMD_FRE | PORT_CMD_FR)) === 0) return;
    this.#w(cmd, (value & ~PORT_CMD_FRE) >>> 0);
    await this.#waitFor("PxCMD.FR to clear", () => (this.#r(cmd) & PORT_CMD_FR) === 0);
  }

  #stopEngine(): Promise<void> {
    return this.#stopEngineAt(this.#regs.cmd);
  }

  #stopFisRx(): Promise<void> {
    return this.#stopFisRxAt(this.#regs.cmd);
  }

  #clearSerr(): number {
    const serr = this.#r(this.#regOff(PORT_SERR));
    if (serr !== 0) this.#w(this.#regOff(PORT_SERR), serr);
    return serr;
  }

  /** SERR, then PxIS, then this port's bit of IS (libahci's order). */
  #clearErrors(): void {
    this.#clearSerr();
    const status = this.#r(this.#regs.is);
    if (status !== 0) this.#w(this.#regs.is, status);
    this.#w(this.#abar + HOST_BASE + HOST_IS, this.#regs.bit);
  }

  #detach(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }

  // ---- submission -----------------------------------------------------------------------------

  #checkRequest(lba: number, sectors: number): Error | null {
    if (this.#state === STATE_DEAD) return this.#deadReason ?? new AhciDriverError("the port is dead");
    if (!Number.isSafeInteger(lba) || lba < 0) return new RangeError(`invalid LBA ${lba}`);
    if (!Number.isSafeInteger(sectors) || sectors <= 0)
      return new RangeError(`invalid sector count ${sectors}`);
    if (lba + sectors > 2 ** 48)
      return new RangeError(`LBA ${lba} + ${sectors} sectors is beyond 48-bit addressing`);
    return null;
  }

  #checkGuest(address: number, bytes: number): Error | null {
    if (!Number.isSafeInteger(address) || address % 2 !== 0 || !this.#memory.isGuestRange(address, bytes)) {
      return new RangeError(`guest buffer 0x${address.toString(16)}+${bytes} is not word-aligned guest RAM`);
    }
    return null;
  }

  #split(
    lba: number,
    sectors: number,
    max: number,
    make: (lba: number, sectors: number, byteOffset: number) => Command,
  ): Promise<void> {
    if (sectors <= max) return this.#submit(make(lba, sectors, 0)) as Promise<unknown> as Promise<void>;
    const pieces: Promise<unknown>[] = [];
    for (let done = 0; done < sectors; done += max) {
      pieces.push(this.#submit(make(lba + done, Math.min(max, sectors - done), done * SECTOR)));
    }
    return Promise.all(pieces).then(noop);
  }

  #submit(command: Command): Promise<Uint8Array | undefined> {
    if (this.#state === STATE_DEAD) {
      return Promise.reject(this.#deadReason ?? new AhciDriverError("the port is dead"));
    }
    const promise = new Promise<Uint8Array | undefined>((resolve, reject) => {
      command.resolve = resolve;
      command.reject = reject;
    });
    command.seq = this.#seq++;
    // Fast path: straight to the device when nothing is waiting and the rules allow it.
    if (this.#head === this.#queue.length && this.#state === STATE_READY && this.#canIssue(command)) {
      this.#issue(command);
    } else {
      this.#queue.push(command);
      this.#pump();
    }
    return promise;
  }

  /** libata's rules: NCQ commands share the device; a non-queued (or solo) one runs alone. */
  #canIssue(command: Command): boolean {
    if (this.#inFlight === 0) return true;
    if (!command.queued || command.solo || this.#activeOther !== 0 || this.#soloActive) return false;
    return this.#inFlight < this.#depth && this.#free !== 0;
  }

  #pump(): void {
    if (this.#state !== STATE_READY) return;
    const queue = this.#queue;
    while (this.#head < queue.length) {
      const command = queue[this.#head]!;
      if (!this.#canIssue(command)) break;
      queue[this.#head++] = undefined;
      this.#issue(command);
    }
    if (this.#head === queue.length) {
      queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > queue.length) {
      this.#queue = queue.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Builds the command in its slot (header, FIS, PRDT in guest RAM) and issues it: PxSACT, PxCI. */
  #issue(command: Command): void {
    const free = this.#free;
    const lowest = free & -free;
    const tag = 31 - Math.clz32(lowest);
    const bit = lowest >>> 0;
    this.#free = free & ~lowest;
    command.tag = tag;
    this.#active[tag] = command;
    const bytes = command.bytes;
    const buffer = command.guestAddress >= 0 ? command.guestAddress : this.#bounce + tag * this.#bounceBytes;
    const mem = this.#memory;

    if (command.kind === KIND_WRITE && command.guestAddress < 0) {
      if (command.data !== null) {
        const from = command.requestOffset;
        mem.write(buffer, command.data.subarray(from, from + bytes));
      } else if (command.produce !== null) {
        this.#produce(command, buffer, bytes);
      }
    }

    // Command table: the FIS, then the PRDT (entries of at most 4 MiB).
    const table = this.#tables + tag * TABLE_BYTES;
    const scratch = this.#tableScratch;
    const fis = encodeAtaCommand(command.name, { lba: command.lba, sectors: command.sectors, tag });
    if (command.features >= 0) fis.FEATURES = command.features;
    if (command.count >= 0) fis.COUNT = command.count;
    encodeRegH2DFis(fis, scratch, 0);
    let entries = 0;
    const prd = this.#prd;
    for (let at = 0; at < bytes; at += MAX_PRD_BYTES, entries++) {
      const address = buffer + at;
      prd.DBA = address % 2 ** 32;
      prd.DBAU = Math.floor(address / 2 ** 32);
      prd.DW3 = (Math.min(MAX_PRD_BYTES, bytes - at) - 1) & PRD_ENTRY_DW3_DBC;
      encodePrdEntry(prd, scratch, COMMAND_TABLE_PRDT + entries * PRD_ENTRY_SIZE);
    }
    mem.write(table, this.#tableViews[entries]!);

    // Command header: FIS length in dwords, direction, PRDT length; PRDBC back to 0.
    const header = this.#header;
    header.DW0 =
      (((REG_H2D_FIS_SIZE / 4) << COMMAND_HEADER_DW0_CFL_SHIFT) & COMMAND_HEADER_DW0_CFL) |
      (command.kind === KIND_WRITE ? COMMAND_HEADER_DW0_W : 0) |
      (entries << COMMAND_HEADER_DW0_PRDTL_SHIFT);
    header.DW0 >>>= 0;
    header.PRDBC = 0;
    header.CTBA = table % 2 ** 32;
    header.CTBAU = Math.floor(table / 2 ** 32);
    encodeCommandHeader(header, this.#headerScratch, 0);
    mem.write(this.#commandList + tag * COMMAND_HEADER_SIZE, this.#headerScratch);

    this.#inFlight++;
    if (this.#inFlight > this.stats.maxInFlight) this.stats.maxInFlight = this.#inFlight;
    this.stats.commands++;
    if (command.solo) this.#soloActive = true;
    if (command.queued) {
      this.stats.queuedCommands++;
      this.#activeQueued |= bit;
    } else {
      this.#activeOther |= bit;
    }
    if (this.#batch) {
      if (command.queued) this.#ringSact |= bit;
      this.#ringCi |= bit;
      if (!this.#ringScheduled) {
        this.#ringScheduled = true;
        queueMicrotask(this.#ring);
      }
    } else {
      if (command.queued) this.#w(this.#regs.sact, bit);
      this.#w(this.#regs.ci, bit);
    }
    if (!this.#interrupts) void this.#pollLoop();
  }

  /** The doorbell: PxSACT (the queued tags) then PxCI, for everything built since the last one. */
  readonly #ring = (): void => {
    this.#ringScheduled = false;
    const sact = this.#ringSact;
    const ci = this.#ringCi;
    this.#ringSact = 0;
    this.#ringCi = 0;
    if (ci === 0 || this.#state !== STATE_READY) return;
    if (sact !== 0) this.#w(this.#regs.sact, sact >>> 0);
    this.#w(this.#regs.ci, ci >>> 0);
  };

  /** Tags on the device: active ones minus those still waiting for the doorbell. */
  #onDevice(active: number): number {
    return active & ~this.#ringCi;
  }

  #produce(command: Command, buffer: number, bytes: number): void {
    const ram = this.#ram;
    if (ram !== null) {
      command.produce!(ram.subarray(buffer, buffer + bytes), command.requestOffset);
    } else {
      const staging = new Uint8Array(bytes);
      command.produce!(staging, command.requestOffset);
      this.#memory.write(buffer, staging);
    }
  }

  // ---- completion -----------------------------------------------------------------------------

  readonly #onIrq = (level: boolean): void => {
    // The CPU takes the interrupt after the current instruction (never inside the VMM's exit or
    // the device's own code): a microtask; or, mitigated, after the device's other completions
    // of this turn have landed.
    if (level && !this.#irqScheduled) {
      this.#irqScheduled = true;
      if (this.#coalesce && this.#inFlight > 1) setImmediate(this.#irqTask);
      else queueMicrotask(this.#irqTask);
    }
  };

  readonly #irqTask = (): void => {
    this.#irqScheduled = false;
    if (this.#unsubscribe === null) return;
    const mine = this.#interrupt();
    // Level-triggered: if the line is still up for this port, take it again.
    if (mine && this.#platform.irqPending && !this.#irqScheduled) {
      const is = this.#r(this.#abar + HOST_BASE + HOST_IS);
      if ((is & this.#regs.bit) !== 0) {
        this.#irqScheduled = true;
        queueMicrotask(this.#irqTask);
      }
    }
  };

  /** The interrupt handler (ahci_single_level_irq_intr): IS, the port, then IS cleared. */
  #interrupt(): boolean {
    const hostIs = this.#abar + HOST_BASE + HOST_IS;
    const status = this.#r(hostIs);
    if ((status & this.#regs.bit) === 0) {
      this.stats.spuriousInterrupts++;
      return false;
    }
    this.stats.interrupts++;
    this.#servicePort();
    this.#w(hostIs, this.#regs.bit);
    return true;
  }

  /** ahci_port_intr: PxIS read and cleared, errors handled, finished tags from PxSACT or PxCI. */
  #servicePort(): void {
    const status = this.#r(this.#regs.is);
    if (status !== 0) this.#w(this.#regs.is, status);
    if (this.#state !== STATE_READY) return;
    if ((status & PORT_IS_ERRORS) !== 0) {
      this.#error(status);
      return;
    }
    this.#reap();
  }

  #reap(): void {
    let done = 0;
    const queued = this.#onDevice(this.#activeQueued);
    const other = this.#onDevice(this.#activeOther);
    if (queued !== 0) {
      done = queued & ~this.#r(this.#regs.sact);
    } else if (other !== 0) {
      done = other & ~this.#r(this.#regs.ci);
    }
    while (done !== 0) {
      const lowest = done & -done;
      done ^= lowest;
      this.#complete(31 - Math.clz32(lowest), null);
    }
    this.#pump();
    this.#checkIdle();
  }

  /** Hands a finished command its data (or error), frees its tag. */
  #complete(tag: number, error: Error | null): void {
    const command = this.#active[tag]!;
    const bit = (1 << tag) >>> 0;
    this.#active[tag] = undefined;
    this.#activeQueued &= ~bit;
    this.#activeOther &= ~bit;
    this.#inFlight--;
    if (command.solo) this.#soloActive = false;
    let value: Uint8Array | undefined;
    if (error === null) {
      this.stats.completions++;
      try {
        value = this.#deliver(command);
      } catch (thrown) {
        error = thrown instanceof Error ? thrown : new Error(String(thrown));
      }
    }
    this.#free |= bit;
    if (error === null) command.resolve(value);
    else command.reject(error);
  }

  #deliver(command: Command): Uint8Array | undefined {
    const bytes = command.bytes;
    if (command.kind === KIND_WRITE) {
      this.stats.bytesWritten += bytes;
      return undefined;
    }
    if (command.kind === KIND_NODATA) return undefined;
    const buffer =
      command.guestAddress >= 0 ? command.guestAddress : this.#bounce + command.tag * this.#bounceBytes;
    this.stats.bytesRead += bytes;
    if (command.kind === KIND_PIO_IN || (command.into === null && command.consume === null)) {
      return command.guestAddress >= 0 && command.kind === KIND_READ
        ? undefined
        : this.#memory.read(buffer, bytes);
    }
    if (command.into !== null) {
      this.#memory.readInto(buffer, command.into.subarray(command.intoOffset, command.intoOffset + bytes));
    } else {
      const ram = this.#ram;
      const view = ram !== null ? ram.subarray(buffer, buffer + bytes) : this.#memory.read(buffer, bytes);
      command.consume!(view, command.requestOffset);
    }
    return undefined;
  }

  #checkIdle(): void {
    if (this.#idleWaiters.length > 0 && this.#inFlight === 0 && this.#head === this.#queue.length) {
      for (const wake of this.#idleWaiters.splice(0)) wake();
    }
  }

  async #pollLoop(): Promise<void> {
    if (this.#polling) return;
    this.#polling = true;
    try {
      while (this.#inFlight > 0 && this.#unsubscribe !== null) {
        await this.clock.sleep(this.#pollMs);
        this.stats.polls++;
        if (this.#inFlight > 0) this.#servicePort();
      }
    } finally {
      this.#polling = false;
    }
  }

  // ---- errors and recovery (ahci_error_intr, ahci_port_reset / kick_engine) --------------------

  #error(status: number): void {
    this.stats.errors++;
    const taskFile = this.#r(this.#regOff(PORT_TFD));
    const serr = this.#r(this.#regOff(PORT_SERR));
    // The device's status also arrives as a D2H register FIS in the received-FIS area (libahci
    // reads the result task file from there).
    const d2h = decodeRegD2HFis(this.#memory.read(this.#fisArea + RECEIVED_FIS_RFIS, REG_D2H_FIS_SIZE));
    const fis = { status: d2h.STATUS, error: d2h.ERROR };
    // Commands that completed before the error finish normally.
    let done = 0;
    const queued = this.#onDevice(this.#activeQueued);
    const other = this.#onDevice(this.#activeOther);
    if (queued !== 0) done |= queued & ~this.#r(this.#regs.sact);
    if (other !== 0) done |= other & ~this.#r(this.#regs.ci);
    while (done !== 0) {
      const lowest = done & -done;
      done ^= lowest;
      this.#complete(31 - Math.clz32(lowest), null);
    }
    // The rest are taken off the device: stopping the engine drops them there.
    const victims: Command[] = [];
    for (let tag = 0; tag < 32; tag++) {
      const command = this.#active[tag];
      if (command === undefined) continue;
      victims.push(command);
      this.#active[tag] = undefined;
      this.#free |= (1 << tag) >>> 0;
    }
    victims.sort((a, b) => a.seq - b.seq);
    // Commands whose doorbell has not rung never reach the device: they go with the victims.
    this.#ringSact = 0;
    this.#ringCi = 0;
    this.#activeQueued = 0;
    this.#activeOther = 0;
    this.#inFlight = 0;
    this.#soloActive = false;
    this.#state = STATE_RECOVERING;
    void this.#recover(status, taskFile, fis, serr, victims);
  }

  async #recover(
    status: number,
    taskFile: number,
    fis: { status: number; error: number },
    serr: number,
    victims: Command[],
  ): Promise<void> {
    this.stats.recoveries++;
    try {
      await this.#stopEngine();
      this.#clearErrors();
      const tfd = this.#r(this.#regOff(PORT_TFD));
      if ((tfd & (ATA_BUSY | ATA_DRQ)) !== 0) {
        // ahci_kick_engine: command list override clears BSY and DRQ.
        if ((this.#cap & HOST_CAP_SCLO) === 0) {
          throw new AhciDriverError(
            `port ${this.port}: device stuck busy (PxTFD ${hex(tfd)}) and no CLO support`,
          );
        }
        this.#w(this.#regs.cmd, (this.#r(this.#regs.cmd) | PORT_CMD_CLO) >>> 0);
        await this.#waitFor("PxCMD.CLO to clear", () => (this.#r(this.#regs.cmd) & PORT_CMD_CLO) === 0);
      }
      this.#w(this.#regs.cmd, (this.#r(this.#regs.cmd) | PORT_CMD_ST) >>> 0);
    } catch (error) {
      const dead = new AhciDriverError(`port ${this.port}: recovery after an error failed`, { cause: error });
      this.#die(dead, victims);
      return;
    }
    const deviceError = (status & PORT_IS_TFES) !== 0 && (status & ~PORT_IS_TFES & PORT_IS_ERRORS) === 0;
    if (deviceError && victims.length > 1) {
      // NCQ error with several commands out: which one failed is unknown (no READ LOG EXT here),
      // so each is retried alone, as libata's EH does; the one that fails alone is reported.
      const retry: Command[] = [];
      for (const command of victims) {
        if (command.retried) {
          command.reject(this.#failure(command, status, taskFile, fis, serr));
        } else {
          command.retried = true;
          command.solo = true;
          this.stats.retries++;
          retry.push(command);
        }
      }
      this.#queue.splice(this.#head, 0, ...retry);
    } else {
      for (const command of victims) command.reject(this.#failure(command, status, taskFile, fis, serr));
    }
    this.#state = STATE_READY;
    this.#pump();
    this.#checkIdle();
  }

  #die(reason: Error, victims: Command[]): void {
    this.#state = STATE_DEAD;
    this.#deadReason = reason;
    for (const command of victims) command.reject(reason);
    for (let i = this.#head; i < this.#queue.length; i++) this.#queue[i]?.reject(reason);
    this.#queue = [];
    this.#head = 0;
    this.#checkIdle();
  }

  #failure(
    command: Command,
    portIs: number,
    taskFile: number,
    fis: { status: number; error: number },
    serr: number,
  ): AhciCommandError {
    let statusByte = (taskFile & PORT_TFD_STS) >>> 0;
    let errorByte = (taskFile & PORT_TFD_ERR) >>> PORT_TFD_ERR_SHIFT;
    let source = `PxTFD ${hex(taskFile)}`;
    if ((statusByte & ATA_ERR) === 0 && (fis.status & ATA_ERR) !== 0) {
      // PxTFD no longer shows the error (it was overwritten); the received D2H FIS still does.
      statusByte = fis.status;
      errorByte = fis.error;
      source = `PxTFD ${hex(taskFile)} shows no error; D2H register FIS`;
    }
    const what =
      command.kind === KIND_READ || command.kind === KIND_WRITE
        ? `${command.name} of ${command.sectors} sectors at LBA ${command.lba}`
        : command.name;
    let cause: string;
    if ((portIs & PORT_IS_TFES) !== 0) {
      cause =
        `device error (${source}: status 0x${statusByte.toString(16)} [${bitNames(statusByte, STATUS_NAMES)}], ` +
        `error 0x${errorByte.toString(16)} [${bitNames(errorByte, ERROR_NAMES)}])`;
    } else {
      cause = `HBA error (PxIS ${hex(portIs)}, PxSERR ${hex(serr)}, PxTFD ${hex(taskFile)})`;
    }
    let hint = "";
    const size = this.#identity?.sectors;
    if (size !== undefined && (command.kind === KIND_READ || command.kind === KIND_WRITE)) {
      if (command.lba + command.sectors > size) hint = `; the request ends beyond the disk's ${size} sectors`;
    }
    return new AhciCommandError(
      `AHCI port ${this.port}: ${what} (tag ${command.tag}) failed: ${cause}${hint}`,
      {
        command: command.name,
        lba: command.lba,
        sectors: command.sectors,
        tag: command.tag,
        portIs,
        taskFile,
        status: statusByte,
        error: errorByte,
        fisStatus: fis.status,
        fisError: fis.error,
        serr,
      },
    );
  }
}
