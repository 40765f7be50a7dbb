/**
 * Builds the AHCI conformance corpus: guest traces (docs: /work/shared/formats/guest-trace.md)
 * written from the AHCI 1.3.1, SATA and ATA8-ACS specifications, hand-encoded. This file does
 * not import anything from the project's sources on purpose: it is the specification's view of
 * the device, to be replayed against this project's controller and against others (QEMU's).
 *
 *   npx tsx test/conformance/build-traces.ts          # (re)write test/conformance/traces/
 *   npx tsx test/conformance/build-traces.ts --check  # exit 1 if the committed traces differ
 *
 * Output is deterministic: no clocks, no randomness, fixed key order.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// ---------------------------------------------------------------------------------------------
// The machine and the guest's memory map (same conventions as /work/shared/traces)
// ---------------------------------------------------------------------------------------------

const ABAR = 0xfebf0000;
const RAM_MIB = 64;
const RAM_BYTES = RAM_MIB * 1024 * 1024;
const DISK_SECTORS = 65536;
const SECTOR = 512;

/** Command list (1 KiB aligned, AHCI 1.3.1 §3.3.1), received-FIS area (256 B aligned, §3.3.3). */
const CLB = 0x40000;
const FB = 0x40400;
/** Command table of slot n at CT_BASE + n * CT_STRIDE (128-byte aligned, §4.2.2 DW2). */
const CT_BASE = 0x41000;
const CT_STRIDE = 0x400;
/** Data buffers live at and above this address. */
const DATA_BASE = 0x80000;

/** Received-FIS offsets (AHCI 1.3.1 §4.2.1). */
const RFIS_PIO = 0x20;
const RFIS_D2H = 0x40;
const RFIS_SDB = 0x58;

// Generic host control (AHCI 1.3.1 §3.1)
const CAP = 0x00;
const GHC = 0x04;
const IS = 0x08;
const PI = 0x0c;
const VS = 0x10;
// Port 0 registers (AHCI 1.3.1 §3.3), port x at 0x100 + x * 0x80
const P0 = 0x100;
const PxCLB = P0 + 0x00;
const PxCLBU = P0 + 0x04;
const PxFB = P0 + 0x08;
const PxFBU = P0 + 0x0c;
const PxIS = P0 + 0x10;
const PxIE = P0 + 0x14;
const PxCMD = P0 + 0x18;
const PxTFD = P0 + 0x20;
const PxSIG = P0 + 0x24;
const PxSSTS = P0 + 0x28;
const PxSCTL = P0 + 0x2c;
const PxSERR = P0 + 0x30;
const PxSACT = P0 + 0x34;
const PxCI = P0 + 0x38;

const GHC_HR = 0x1;
const GHC_IE = 0x2;
const GHC_AE = 0x80000000;
const CAP_NCS = 0x1f00;
const CAP_SNCQ = 0x40000000;

// PxIS / PxIE bits (§3.3.5, §3.3.6)
const IS_DHRS = 1 << 0;
const IS_PSS = 1 << 1;
const IS_SDBS = 1 << 3;
const IS_TFES = 0x40000000;
/** PxIS bits that only command processing can set (not link events): SDBS, DSS, PSS, UFS, DPS, HBDS, HBFS, IFS, TFES. */
const IS_COMMAND_BITS = 0x7800003e;

// PxCMD bits (§3.3.7)
const CMD_ST = 0x1;
const CMD_SUD = 0x2;
const CMD_POD = 0x4;
const CMD_FRE = 0x10;
const CMD_FR = 0x4000;
const CMD_CR = 0x8000;
/** ST, FRE, FR, CR: the engine bits the traces look at. */
const CMD_ENGINES = CMD_ST | CMD_FRE | CMD_FR | CMD_CR;
/** SUD and POD are written as 1: they are RO 1 unless CAP.SSS / PxCMD.CPD (§3.3.7), and clearing SUD
 * on an HBA with staggered spin-up would put the port into listen mode. */
const CMD_IDLE = CMD_SUD | CMD_POD;

// PxTFD (§3.3.8): STS in 7:0, ERR in 15:8
const STS_ERR = 0x01;
const STS_DRQ = 0x08;
const STS_BSY = 0x80;
const STS_BUSY_MASK = STS_BSY | STS_DRQ | STS_ERR;
const ERR_ABRT = 0x04;

// ATA commands (ATA8-ACS)
const ATA = {
  NOP: 0x00,
  READ_DMA_EXT: 0x25,
  WRITE_DMA_EXT: 0x35,
  READ_FPDMA_QUEUED: 0x60,
  WRITE_FPDMA_QUEUED: 0x61,
  READ_DMA: 0xc8,
  WRITE_DMA: 0xca,
  FLUSH_CACHE: 0xe7,
  IDENTIFY_DEVICE: 0xec,
  FLUSH_CACHE_EXT: 0xea,
  SET_FEATURES: 0xef,
  VENDOR_F0: 0xf0,
} as const;

const DEVICE_LBA = 0x40;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const u32 = (n: number): number => n >>> 0;
const hexNum = (n: number): string => `0x${u32(n).toString(16)}`;
const hexAddr = (n: number): string => {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`bad address ${n}`);
  return `0x${n.toString(16)}`;
};
const toHex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const bit = (n: number): number => u32(2 ** n);

function le32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, u32(n), true);
  return b;
}
function le16(n: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n, true);
  return b;
}

/** The disk pattern `lba`: each byte of sector s repeats the 8-byte LE encoding of s, 64 times. */
function lbaPattern(lba: number, sectors: number): Uint8Array {
  const out = new Uint8Array(sectors * SECTOR);
  const view = new DataView(out.buffer);
  for (let s = 0; s < sectors; s++) {
    for (let w = 0; w < SECTOR / 8; w++) view.setBigUint64(s * SECTOR + w * 8, BigInt(lba + s), true);
  }
  return out;
}

function filled(len: number, byte: number): Uint8Array {
  return new Uint8Array(len).fill(byte);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts.map((p) => Buffer.from(p))));
}

// ---------------------------------------------------------------------------------------------
// AHCI and FIS structures, hand-encoded from the specifications
// ---------------------------------------------------------------------------------------------

/** Register host-to-device FIS (SATA, FIS type 27h), 20 bytes; CFL = 5 dwords. */
interface H2d {
  command: number;
  features?: number;
  featuresExp?: number;
  lba?: number;
  device?: number;
  count?: number;
  icc?: number;
  control?: number;
}

function h2dFis(f: H2d): Uint8Array {
  const b = new Uint8Array(20);
  const lba = f.lba ?? 0;
  if (!Number.isSafeInteger(lba) || lba < 0 || lba >= 2 ** 48) throw new Error(`bad LBA ${lba}`);
  const count = f.count ?? 0;
  if (count < 0 || count > 0xffff) throw new Error(`bad count ${count}`);
  b[0] = 0x27; // FIS type: Register H2D
  b[1] = 0x80; // C = 1 (command register update), PM port 0
  b[2] = f.command;
  b[3] = (f.features ?? 0) & 0xff;
  b[4] = lba & 0xff;
  b[5] = Math.floor(lba / 2 ** 8) & 0xff;
  b[6] = Math.floor(lba / 2 ** 16) & 0xff;
  b[7] = f.device ?? 0;
  b[8] = Math.floor(lba / 2 ** 24) & 0xff;
  b[9] = Math.floor(lba / 2 ** 32) & 0xff;
  b[10] = Math.floor(lba / 2 ** 40) & 0xff;
  b[11] = (f.featuresExp ?? 0) & 0xff;
  b[12] = count & 0xff;
  b[13] = (count >> 8) & 0xff;
  b[14] = f.icc ?? 0;
  b[15] = f.control ?? 0;
  return b;
}

/** 48-bit DMA command (READ/WRITE DMA EXT). COUNT 0 would mean 65536. */
function dmaExt(command: number, lba: number, sectors: number): Uint8Array {
  if (sectors < 1 || sectors > 0xffff) throw new Error("dmaExt: 1..65535 sectors");
  return h2dFis({ command, lba, device: DEVICE_LBA, count: sectors });
}

/** 28-bit DMA command (READ/WRITE DMA): LBA 27:24 in DEVICE 3:0; COUNT 0 means 256 sectors. */
function dma28(command: number, lba: number, sectors: number): Uint8Array {
  if (lba >= 2 ** 28 || sectors < 1 || sectors > 256) throw new Error("dma28: LBA < 2^28, 1..256 sectors");
  const fis = h2dFis({ command, lba: lba & 0xffffff, device: DEVICE_LBA | ((lba >>> 24) & 0xf) });
  fis[12] = sectors & 0xff; // 256 -> 0
  return fis;
}

/** READ/WRITE FPDMA QUEUED (SATA NCQ): count in FEATURES 15:0, tag in COUNT 7:3, DEVICE bit 6 = 1. */
function fpdma(command: number, tag: number, lba: number, sectors: number): Uint8Array {
  if (tag < 0 || tag > 31) throw new Error("NCQ tag 0..31");
  if (sectors < 1 || sectors > 0xffff) throw new Error("fpdma: 1..65535 sectors");
  return h2dFis({
    command,
    lba,
    features: sectors & 0xff,
    featuresExp: sectors >> 8,
    count: tag << 3,
    device: DEVICE_LBA,
  });
}

/** One physical region descriptor (AHCI 1.3.1 §4.2.3). */
interface Prd {
  addr: number;
  bytes: number;
  irq?: boolean;
}

interface Command {
  slot: number;
  fis: Uint8Array;
  prds: Prd[];
  /** Command header W bit: data flows from memory to the device. */
  write?: boolean;
}

/** Command header DW0 (§4.2.2): CFL 4:0 | A 5 | W 6 | P 7 | R 8 | B 9 | C 10 | PMP 15:12 | PRDTL 31:16. */
function commandHeader(cmd: Command): Uint8Array {
  const ctba = CT_BASE + cmd.slot * CT_STRIDE;
  if (ctba % 128 !== 0) throw new Error("CTBA must be 128-byte aligned");
  const cfl = cmd.fis.length / 4;
  const dw0 = cfl | (cmd.write ? 1 << 6 : 0) | (cmd.prds.length << 16);
  return concat(le32(dw0), le32(0 /* PRDBC */), le32(ctba), le32(0 /* CTBAU */), new Uint8Array(16));
}

/** Command table (§4.2.3): CFIS at 00h, ACMD at 40h, PRDT at 80h, 16 bytes per entry. */
function commandTable(cmd: Command): Uint8Array {
  const maxPrds = (CT_STRIDE - 0x80) / 16;
  if (cmd.prds.length > maxPrds) throw new Error(`at most ${maxPrds} PRDs per table in this layout`);
  const t = new Uint8Array(0x80 + 16 * cmd.prds.length);
  t.set(cmd.fis, 0);
  cmd.prds.forEach((p, i) => {
    if (p.addr % 2 !== 0) throw new Error("PRD DBA must be word aligned (bit 0 reserved)");
    if (p.bytes < 2 || p.bytes % 2 !== 0 || p.bytes > 4 * 1024 * 1024)
      throw new Error("PRD byte count must be even and at most 4 MiB (DBC bit 0 is 1)");
    if (p.addr < DATA_BASE || p.addr + p.bytes > RAM_BYTES) throw new Error("PRD outside the data area");
    const dw3 = (p.bytes - 1) | (p.irq ? 0x80000000 : 0);
    t.set(concat(le32(p.addr), le32(0), le32(0), le32(dw3)), 0x80 + 16 * i);
  });
  return t;
}

// ---------------------------------------------------------------------------------------------
// The trace builder
// ---------------------------------------------------------------------------------------------

type Scalar = string | number | boolean;

/** Python-style separators, as in the shared example traces. */
function serialize(obj: Record<string, Scalar | Record<string, Scalar>>): string {
  const parts = Object.entries(obj).map(([k, v]) => {
    const value =
      typeof v === "object"
        ? `{${Object.entries(v)
            .map(([k2, v2]) => `${JSON.stringify(k2)}: ${JSON.stringify(v2)}`)
            .join(", ")}}`
        : JSON.stringify(v);
    return `${JSON.stringify(k)}: ${value}`;
  });
  return `{${parts.join(", ")}}`;
}

interface Machine {
  diskSectors: number;
}

const POLL_MS = 5000;

class Trace {
  private readonly lines: string[] = [];
  readonly diskSectors: number;

  constructor(
    readonly name: string,
    purpose: string,
    machine: Partial<Machine> = {},
  ) {
    this.diskSectors = machine.diskSectors ?? DISK_SECTORS;
    this.lines.push(
      serialize({
        trace: name,
        device: "ahci",
        machine: {
          ram_mib: RAM_MIB,
          abar: hexAddr(ABAR),
          disk_sectors: this.diskSectors,
          disk_pattern: "lba",
        },
      }),
    );
    this.comment(purpose);
  }

  text(): string {
    return `${this.lines.join("\n")}\n`;
  }

  private op(o: Record<string, Scalar>): void {
    this.lines.push(serialize(o));
  }

  // --- raw operations of the format ---------------------------------------------------------

  comment(text: string): void {
    this.op({ op: "comment", text });
  }

  write(reg: number, value: number): void {
    this.op({ op: "mmio_write", addr: hexAddr(ABAR + reg), size: 4, value: hexNum(value) });
  }

  /** A load with a check: (read & mask) == (expect & mask). */
  expect(reg: number, expect: number, mask = 0xffffffff): void {
    const o: Record<string, Scalar> = {
      op: "mmio_read",
      addr: hexAddr(ABAR + reg),
      size: 4,
      expect: hexNum(expect),
    };
    if (u32(mask) !== 0xffffffff) o.mask = hexNum(mask);
    this.op(o);
  }

  /** A load without a check (what a driver reads for its own information). */
  read(reg: number): void {
    this.op({ op: "mmio_read", addr: hexAddr(ABAR + reg), size: 4 });
  }

  poll(reg: number, mask: number, value: number, maxMs = POLL_MS): void {
    if ((u32(value) & ~u32(mask)) !== 0) throw new Error("poll value outside its mask");
    this.op({
      op: "poll",
      addr: hexAddr(ABAR + reg),
      size: 4,
      mask: hexNum(mask),
      value: hexNum(value),
      max_ms: maxMs,
    });
  }

  memWrite(addr: number, bytes: Uint8Array): void {
    this.checkRam(addr, bytes.length);
    this.op({ op: "mem_write", addr: hexAddr(addr), hex: toHex(bytes) });
  }

  memFill(addr: number, len: number, byte: number): void {
    this.checkRam(addr, len);
    this.op({ op: "mem_fill", addr: hexAddr(addr), len, byte: hexNum(byte) });
  }

  memExpectHex(addr: number, bytes: Uint8Array): void {
    this.checkRam(addr, bytes.length);
    this.op({ op: "mem_expect", addr: hexAddr(addr), hex: toHex(bytes) });
  }

  memExpectSha(addr: number, bytes: Uint8Array): void {
    this.checkRam(addr, bytes.length);
    this.op({ op: "mem_expect", addr: hexAddr(addr), len: bytes.length, sha256: sha256(bytes) });
  }

  /** Memory holds whole sectors of the initial disk image starting at `lba`. */
  memExpectLba(addr: number, lba: number, sectors: number): void {
    this.checkRam(addr, sectors * SECTOR);
    this.checkDisk(lba, sectors);
    this.op({ op: "mem_expect", addr: hexAddr(addr), len: sectors * SECTOR, pattern: "lba", lba });
  }

  diskExpectLba(lba: number, count: number): void {
    this.checkDisk(lba, count);
    this.op({ op: "disk_expect", lba, count, pattern: "lba" });
  }

  diskExpectSha(lba: number, data: Uint8Array): void {
    if (data.length % SECTOR !== 0) throw new Error("disk_expect covers whole sectors");
    this.checkDisk(lba, data.length / SECTOR);
    this.op({ op: "disk_expect", lba, count: data.length / SECTOR, sha256: sha256(data) });
  }

  irq(expect: boolean): void {
    this.op({ op: "irq", expect });
  }

  settle(): void {
    this.op({ op: "settle" });
  }

  finish(): void {
    this.op({ op: "finish" });
  }

  private checkRam(addr: number, len: number): void {
    if (addr < 0 || addr + len > RAM_BYTES)
      throw new Error(`${this.name}: RAM access outside ${RAM_MIB} MiB`);
  }

  private checkDisk(lba: number, count: number): void {
    if (lba < 0 || count < 1 || lba + count > this.diskSectors)
      throw new Error(`${this.name}: disk range ${lba}+${count} outside ${this.diskSectors} sectors`);
  }

  // --- AHCI procedures ------------------------------------------------------------------------

  /** HBA reset (AHCI 1.3.1 §10.4.3), the way Linux's ahci_reset_controller does it. */
  hbaReset(): void {
    this.comment(
      "HBA reset (AHCI 1.3.1 §10.4.3): GHC.AE=1, then GHC.HR=1 with AE kept, poll until the HBA clears HR (§3.1.2: within 1 s), then GHC.AE=1 again",
    );
    this.write(GHC, GHC_AE);
    this.write(GHC, GHC_AE | GHC_HR);
    this.poll(GHC, GHC_HR, 0);
    this.write(GHC, GHC_AE);
    this.comment("AHCI 1.3.1 §3.1.2: AE reads 1 once set (RW when CAP.SAM=0, RO 1 when CAP.SAM=1); HR is 0");
    this.expect(GHC, GHC_AE, GHC_AE | GHC_HR);
  }

  /** Engines off: clear ST and FRE, wait for CR and FR to clear (§10.3.1, §10.3.2: within 500 ms). */
  stopPort(): void {
    this.write(PxCMD, CMD_IDLE);
    this.poll(PxCMD, CMD_CR | CMD_FR, 0);
  }

  /** Set PxCMD.ST with FRE kept on, wait for CR (§10.3.1). */
  startPort(): void {
    this.write(PxCMD, CMD_IDLE | CMD_FRE | CMD_ST);
    this.poll(PxCMD, CMD_CR | CMD_FR, CMD_CR | CMD_FR);
  }

  /** COMRESET through PxSCTL.DET (§3.3.11, §10.4.2), then wait for the device's signature FIS. */
  comreset(ipm = 0): void {
    this.comment(
      "COMRESET (AHCI 1.3.1 §10.4.2, §3.3.11): PxSCTL.DET=1 then DET=0 with PxCMD.ST=0 (the format has no delay op: the 1 ms minimum DET=1 time is not enforced)",
    );
    this.write(PxSCTL, (ipm << 8) | 1);
    this.write(PxSCTL, ipm << 8);
    this.comment(
      "device present and communication established: PxSSTS.DET=3 (§3.3.10); device ready: PxTFD.STS BSY, DRQ and ERR clear (§10.1.2); ATA signature in PxSIG (§3.3.9: count 01h, LBA 01h/00h/00h)",
    );
    this.poll(PxSSTS, 0xf, 0x3);
    this.poll(PxTFD, STS_BUSY_MASK, 0);
    this.poll(PxSIG, 0xffffffff, 0x101);
  }

  /** The whole port 0 bring-up (AHCI 1.3.1 §10.1.2 and §10.3), ending with PxCMD.ST=1. */
  initPort(opts: { ie?: number; ipm?: number } = {}): void {
    this.comment(
      "port 0 init (AHCI 1.3.1 §10.1.2): engines off, CLB/FB, clear SERR/IS, FRE, COMRESET, wait DET=3, BSY/DRQ/ERR=0 and PxSIG, clear SERR/IS, ST",
    );
    this.stopPort();
    this.memFill(CLB, 1024, 0);
    this.memFill(FB, 256, 0);
    this.write(PxCLB, CLB);
    this.write(PxCLBU, 0);
    this.write(PxFB, FB);
    this.write(PxFBU, 0);
    this.write(PxSERR, 0xffffffff);
    this.write(PxIS, 0xffffffff);
    this.write(PxIE, opts.ie ?? 0);
    this.write(PxCMD, CMD_IDLE | CMD_FRE);
    this.poll(PxCMD, CMD_FR, CMD_FR);
    this.comreset(opts.ipm ?? 0);
    this.write(PxSERR, 0xffffffff);
    this.write(PxIS, 0xffffffff);
    this.write(IS, 0x1);
    this.startPort();
  }

  /** Writes the command table, then the command header of its slot. */
  build(cmd: Command): void {
    this.memWrite(CT_BASE + cmd.slot * CT_STRIDE, commandTable(cmd));
    this.memWrite(CLB + cmd.slot * 32, commandHeader(cmd));
  }

  /** Issue non-queued commands (PxCI only) and wait for the HBA to clear their PxCI bits. */
  issueAndWait(slots: number): void {
    this.write(PxCI, slots);
    this.poll(PxCI, slots, 0);
  }

  /** Issue NCQ commands: PxSACT first, then PxCI (AHCI 1.3.1 §3.3.13, §3.3.14). */
  issueNcq(slots: number): void {
    this.write(PxSACT, slots);
    this.write(PxCI, slots);
  }

  /** PxTFD.STS: BSY, DRQ and ERR clear. */
  expectTfdOk(): void {
    this.expect(PxTFD, 0, STS_BUSY_MASK);
  }

  /** PRD byte count in the command header DW1 (§4.2.2). */
  expectPrdbc(slot: number, bytes: number): void {
    this.memExpectHex(CLB + slot * 32 + 4, le32(bytes));
  }

  /** Clears the received-FIS area so that a later FIS check proves a new FIS arrived. */
  clearFis(): void {
    this.memFill(FB, 256, 0);
  }

  expectD2hFis(): void {
    this.comment(
      "AHCI 1.3.1 §4.2.1: the D2H Register FIS (type 34h) that ended the command is copied to FB+40h",
    );
    this.memExpectHex(FB + RFIS_D2H, Uint8Array.of(0x34));
  }

  /**
   * Non-queued error recovery (AHCI 1.3.1 §6.2.2.1): clear ST (which clears PxCI, §3.3.14), wait
   * for CR, clear PxSERR, PxIS and IS, check BSY/DRQ are clear (else a COMRESET would be needed),
   * set ST again.
   */
  recover(): void {
    this.comment(
      "recovery (AHCI 1.3.1 §6.2.2.1): PxCMD.ST=0, wait PxCMD.CR=0; PxCI is cleared when ST goes from 1 to 0 (§3.3.14)",
    );
    this.write(PxCMD, CMD_IDLE | CMD_FRE);
    this.poll(PxCMD, CMD_CR, 0);
    this.expect(PxCI, 0);
    this.expect(PxSACT, 0);
    this.comment(
      "clear PxSERR, PxIS (TFES) and IS.IPS; BSY and DRQ are clear, so no COMRESET is needed before ST=1 (§6.2.2.1)",
    );
    this.write(PxSERR, 0xffffffff);
    this.write(PxIS, 0xffffffff);
    this.write(IS, 0x1);
    this.expect(PxTFD, 0, STS_BSY | STS_DRQ);
    this.startPort();
  }
}

// ---------------------------------------------------------------------------------------------
// Reusable command recipes
// ---------------------------------------------------------------------------------------------

/** A READ DMA EXT into one buffer that must succeed, with its checks. */
function readAndCheck(t: Trace, slot: number, lba: number, sectors: number, buf: number): void {
  t.memFill(buf, sectors * SECTOR, 0xee);
  t.build({
    slot,
    fis: dmaExt(ATA.READ_DMA_EXT, lba, sectors),
    prds: [{ addr: buf, bytes: sectors * SECTOR }],
  });
  t.issueAndWait(bit(slot));
  t.expectTfdOk();
  t.expectPrdbc(slot, sectors * SECTOR);
  t.memExpectLba(buf, lba, sectors);
}

// ---------------------------------------------------------------------------------------------
// The traces
// ---------------------------------------------------------------------------------------------

function hbaReset(): Trace {
  const t = new Trace(
    "hba-reset",
    "Checks GHC.HR (AHCI 1.3.1 §3.1.2, §10.4.3): HR self-clears and GHC.IE, IS, PxIS, PxIE, PxCMD.ST/FRE/CR/FR, PxSCTL, PxCI and PxSACT return to their reset values after a running port with pending interrupt status; the interrupt drops; the port can be brought up again. GHC.AE is masked right after the reset (RO 1 when CAP.SAM=1, reset 0 otherwise).",
  );
  t.hbaReset();
  t.initPort({ ipm: 3 });

  t.comment(
    "make state that an HBA reset must undo: GHC.IE=1, PxIE=all, PxSCTL.IPM=3 (set by the COMRESET above), PxIS.DHRS and PxIS.SDBS from two commands, IS.IPS[0], a dangling PxSACT bit (set without issuing)",
  );
  t.write(GHC, GHC_AE | GHC_IE);
  t.write(PxIE, 0xffffffff);
  t.memFill(DATA_BASE, SECTOR, 0xee);
  t.build({ slot: 0, fis: dmaExt(ATA.READ_DMA_EXT, 10, 1), prds: [{ addr: DATA_BASE, bytes: SECTOR }] });
  t.issueAndWait(bit(0));
  t.memFill(DATA_BASE + 0x1000, SECTOR, 0xee);
  t.build({
    slot: 1,
    fis: fpdma(ATA.READ_FPDMA_QUEUED, 1, 11, 1),
    prds: [{ addr: DATA_BASE + 0x1000, bytes: SECTOR }],
  });
  t.issueNcq(bit(1));
  t.poll(PxSACT, bit(1), 0);
  t.comment("AHCI 1.3.1 §3.3.5: DHRS (D2H FIS with I=1) and SDBS (Set Device Bits FIS with I=1) are set");
  t.expect(PxIS, IS_DHRS | IS_SDBS, IS_DHRS | IS_SDBS);
  t.write(PxSACT, bit(7));
  t.expect(PxSACT, bit(7));
  t.comment(
    "AHCI 1.3.1 §3.1.3, §10.7: PxIS & PxIE != 0 sets IS.IPS[0]; with GHC.IE=1 the interrupt is pending",
  );
  t.expect(IS, 0x1, 0x1);
  t.irq(true);

  t.comment("HBA reset: GHC.HR=1 (AE kept), poll until HR self-clears (§3.1.2)");
  t.write(GHC, GHC_AE | GHC_HR);
  t.poll(GHC, GHC_HR, 0);
  t.comment(
    "AHCI 1.3.1 §3.1.2: GHC.IE resets to 0 (AE masked: RO 1 if CAP.SAM=1, reset 0 otherwise); §3.1.3: IS resets to 0",
  );
  t.expect(GHC, 0, GHC_HR | GHC_IE);
  t.expect(IS, 0);
  t.irq(false);
  t.comment(
    "AHCI 1.3.1 §3.3.5/§3.3.6: PxIE resets to 0; PxIS bits that only command processing sets are 0 (link-event bits PCS/PRCS and DHRS from the reset's own signature FIS are masked)",
  );
  t.expect(PxIE, 0);
  t.expect(PxIS, 0, IS_COMMAND_BITS);
  t.comment(
    "AHCI 1.3.1 §3.3.7: ST, FRE, CR and FR reset to 0; §3.3.11: PxSCTL resets to 0; §3.3.13/§3.3.14: PxSACT and PxCI reset to 0",
  );
  t.expect(PxCMD, 0, CMD_ENGINES);
  t.expect(PxSCTL, 0, 0xfff);
  t.expect(PxCI, 0);
  t.expect(PxSACT, 0);

  t.comment("GHC.AE=1 again (required when CAP.SAM=0), then the port comes up and a command runs");
  t.write(GHC, GHC_AE);
  t.expect(GHC, GHC_AE, GHC_AE | GHC_HR | GHC_IE);
  t.initPort();
  readAndCheck(t, 0, 12, 2, DATA_BASE + 0x2000);
  return t;
}

function registerAccess(): Trace {
  const t = new Trace(
    "register-access",
    "Checks register access types (AHCI 1.3.1 §3): RO registers ignore writes (CAP, PI, VS, PxSSTS, PxSIG, PxTFD, PxCMD.CR/FR), RWC registers (PxIS, IS, PxSERR) clear only the bits written as 1, PxSACT and PxCI are write-1-to-set (writing 0 clears nothing, only PxCMD.ST 1->0 does), reserved low bits of PxCLB (9:0) and PxFB (7:0) read 0, GHC.IE is RW. Assumes an NCQ HBA with 32 slots (the corpus needs them).",
  );
  t.hbaReset();
  t.initPort();

  t.comment(
    "CAP is HwInit/RO (§3.1.1). The corpus requires CAP.SNCQ=1 and CAP.NCS=31 (32 slots); writing 0 must not change them",
  );
  t.expect(CAP, CAP_SNCQ | CAP_NCS, CAP_SNCQ | CAP_NCS);
  t.write(CAP, 0);
  t.expect(CAP, CAP_SNCQ | CAP_NCS, CAP_SNCQ | CAP_NCS);
  t.comment("PI is HwInit/RO (§3.1.4): bit 0 (port 0, which has the disk) stays set after writing 0");
  t.write(PI, 0);
  t.expect(PI, 0x1, 0x1);
  t.comment("VS is RO (§3.1.5): major version 0001h for AHCI 1.x (minor masked), unchanged by a write of 0");
  t.expect(VS, 0x00010000, 0xffff0000);
  t.write(VS, 0);
  t.expect(VS, 0x00010000, 0xffff0000);

  t.comment("PxSSTS is RO (§3.3.10): DET stays 3 after writing 0");
  t.write(PxSSTS, 0);
  t.expect(PxSSTS, 0x3, 0xf);
  t.comment("PxSIG is RO (§3.3.9): still the ATA signature 00000101h after writing FFFFFFFFh");
  t.write(PxSIG, 0xffffffff);
  t.expect(PxSIG, 0x101);
  t.comment("PxTFD is RO (§3.3.8): writing BSY/DRQ/ERR does not make them read 1");
  t.write(PxTFD, 0xffffffff);
  t.expectTfdOk();

  t.comment("GHC.IE is RW (§3.1.2)");
  t.write(GHC, GHC_AE | GHC_IE);
  t.expect(GHC, GHC_AE | GHC_IE, GHC_AE | GHC_IE | GHC_HR);
  t.write(GHC, GHC_AE);
  t.expect(GHC, GHC_AE, GHC_AE | GHC_IE | GHC_HR);

  t.comment("PxIS is RWC (§3.3.5): a READ DMA EXT sets DHRS (D2H Register FIS with I=1)");
  t.write(PxIS, 0xffffffff);
  readAndCheck(t, 0, 100, 1, DATA_BASE);
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.comment("writing 0, or 1s to every other bit, leaves DHRS set");
  t.write(PxIS, 0);
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.write(PxIS, 0xfffffffe);
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.comment("writing 1 to DHRS clears it");
  t.write(PxIS, IS_DHRS);
  t.expect(PxIS, 0, IS_DHRS);

  t.comment(
    "IS is RWC (§3.1.3): with PxIE.DHRE=1 a command completion sets PxIS.DHRS and IS.IPS[0] (§10.7, independent of GHC.IE, which stays 0: no interrupt)",
  );
  t.write(PxIE, IS_DHRS);
  readAndCheck(t, 0, 101, 1, DATA_BASE);
  t.expect(IS, 0x1, 0x1);
  t.irq(false);
  t.write(IS, 0);
  t.expect(IS, 0x1, 0x1);
  t.comment("clear the source first (PxIS), then IS.IPS[0] by writing 1 (§10.7)");
  t.write(PxIS, IS_DHRS);
  t.write(IS, 0x1);
  t.expect(IS, 0, 0x1);
  t.write(PxIE, 0);

  t.comment(
    "PxSERR is RWC (§3.3.12): no SERR bit can be made to set portably, so this checks that writing all ones leaves it 0 and writing 0 sets nothing",
  );
  t.write(PxSERR, 0xffffffff);
  t.expect(PxSERR, 0);
  t.write(PxSERR, 0);
  t.expect(PxSERR, 0);

  t.comment(
    "PxCI is write-1-to-set (§3.3.14): a command the device aborts (vendor-specific F0h, no data) stops the HBA with its PxCI bit still set (§5.3.16.5 ERR:FatalTaskfile, §6.2.2.1); writing 0 to PxCI does not clear it",
  );
  t.build({ slot: 2, fis: h2dFis({ command: ATA.VENDOR_F0 }), prds: [] });
  t.write(PxCI, bit(2));
  t.poll(PxIS, IS_TFES, IS_TFES);
  t.expect(PxCI, bit(2), bit(2));
  t.write(PxCI, 0);
  t.expect(PxCI, bit(2), bit(2));
  t.comment(
    "PxSACT is write-1-to-set (§3.3.13): with the HBA halted, set bit 7 without issuing a command; writing 0 does not clear it",
  );
  t.write(PxSACT, bit(7));
  t.expect(PxSACT, bit(7));
  t.write(PxSACT, 0);
  t.expect(PxSACT, bit(7));

  t.comment("only PxCMD.ST 1->0 clears PxCI and PxSACT (§3.3.13, §3.3.14)");
  t.recover();

  t.comment("PxCMD.CR and FR are RO (§3.3.7): with the engines stopped, writing them as 1 leaves them 0");
  t.stopPort();
  t.write(PxCMD, CMD_IDLE | CMD_CR | CMD_FR);
  t.expect(PxCMD, 0, CMD_ENGINES);

  t.comment(
    "PxCLB bits 9:0 are RO 0 (§3.3.1: 1 KiB aligned) and PxFB bits 7:0 are RO 0 (§3.3.3: 256-byte aligned, FIS-based switching off); written only while ST=0 and FRE=0",
  );
  t.write(PxCLB, 0xffffffff);
  t.expect(PxCLB, 0xfffffc00);
  t.write(PxFB, 0xffffffff);
  t.expect(PxFB, 0xffffff00);
  t.write(PxCLB, CLB);
  t.write(PxFB, FB);
  t.expect(PxCLB, CLB);
  t.expect(PxFB, FB);

  t.comment("the port still works");
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_FR, CMD_FR);
  t.startPort();
  readAndCheck(t, 0, 102, 1, DATA_BASE);
  return t;
}

function portInitComreset(): Trace {
  const t = new Trace(
    "port-init-comreset",
    "Checks port bring-up (AHCI 1.3.1 §10.1.2, §10.3, §10.4.2): PxCLB/PxFB read back, FR follows FRE, CR follows ST, COMRESET gives PxSSTS.DET=3 with IPM=active, PxTFD BSY/DRQ/ERR clear, PxSIG=00000101h and a signature D2H FIS at FB+40h; clearing ST clears CR and leaves PxCI=0, clearing FRE clears FR; the port restarts and runs a command.",
  );
  t.hbaReset();
  t.comment("after an HBA reset port 0's engines are off (§3.3.7 reset values)");
  t.expect(PxCMD, 0, CMD_ENGINES);
  t.stopPort();
  t.memFill(CLB, 1024, 0);
  t.memFill(FB, 256, 0);
  t.write(PxCLB, CLB);
  t.write(PxCLBU, 0);
  t.write(PxFB, FB);
  t.write(PxFBU, 0);
  t.comment("PxCLB/PxFB are RW (§3.3.1, §3.3.3)");
  t.expect(PxCLB, CLB);
  t.expect(PxFB, FB);
  t.write(PxSERR, 0xffffffff);
  t.write(PxIS, 0xffffffff);
  t.write(PxIE, 0);

  t.comment("FIS receive on (§10.3.2): FR follows FRE; CR stays 0 while ST=0");
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_FR, CMD_FR);
  t.expect(PxCMD, CMD_FRE | CMD_FR, CMD_ENGINES);

  t.comment("wipe the received-FIS area so that the D2H FIS checked below is the one the COMRESET produced");
  t.clearFis();
  t.comment("DET is RW (§3.3.11)");
  t.write(PxSCTL, 1);
  t.expect(PxSCTL, 1, 0xf);
  t.write(PxSCTL, 0);
  t.poll(PxSSTS, 0xf, 0x3);
  t.poll(PxTFD, STS_BUSY_MASK, 0);
  t.poll(PxSIG, 0xffffffff, 0x101);
  t.comment(
    "AHCI 1.3.1 §3.3.10: DET=3 (device present, Phy communication established) and IPM=1 (active); SPD masked",
  );
  t.expect(PxSSTS, 0x103, 0xf0f);
  t.settle();
  t.comment(
    "AHCI 1.3.1 §4.2.1, §10.4.2: with FRE=1 the device's signature Register D2H FIS (34h) lands at FB+40h: LBA 7:0=01h, 15:8=00h, 23:16=00h, count=01h (ATA device signature)",
  );
  t.memExpectHex(FB + RFIS_D2H, Uint8Array.of(0x34));
  t.memExpectHex(FB + RFIS_D2H + 4, Uint8Array.of(0x01, 0x00, 0x00));
  t.memExpectHex(FB + RFIS_D2H + 12, Uint8Array.of(0x01));

  t.write(PxSERR, 0xffffffff);
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.comment("start (§10.3.1): CR follows ST");
  t.write(PxCMD, CMD_IDLE | CMD_FRE | CMD_ST);
  t.poll(PxCMD, CMD_CR, CMD_CR);
  t.expect(PxCMD, CMD_ENGINES, CMD_ENGINES);
  t.expect(PxCI, 0);

  t.comment("stop (§10.3.1): clearing ST clears CR (within 500 ms); FRE/FR stay on; PxCI is 0 (§3.3.14)");
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_CR, 0);
  t.expect(PxCMD, CMD_FRE | CMD_FR, CMD_ENGINES);
  t.expect(PxCI, 0);
  t.comment("FIS receive off (§10.3.2): clearing FRE clears FR (within 500 ms)");
  t.write(PxCMD, CMD_IDLE);
  t.poll(PxCMD, CMD_FR, 0);
  t.expect(PxCMD, 0, CMD_ENGINES);

  t.comment("FRE then ST again; a READ DMA EXT runs");
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_FR, CMD_FR);
  t.startPort();
  readAndCheck(t, 0, 0, 1, DATA_BASE);
  t.expectD2hFis();
  return t;
}

function identify(): Trace {
  const t = new Trace(
    "identify",
    "Checks IDENTIFY DEVICE (ATA8-ACS, PIO data-in) into a 512-byte buffer split over two PRDT entries of 204 and 308 bytes: PRDBC=512, PxIS.PSS, PxTFD clean, a PIO Setup FIS (5Fh) at FB+20h with transfer count 512, words 60-61 and 100-103 equal to disk_sectors (words 100-101 at the end of the first PRD, 102-103 at the start of the second), and no byte written past either PRD.",
  );
  t.hbaReset();
  t.initPort();

  const bufA = DATA_BASE;
  const bufB = DATA_BASE + 0x1000;
  const lenA = 204;
  const lenB = 308;
  t.comment("two non-contiguous buffers pre-filled with A5h; the PRDs cover 204 + 308 bytes");
  t.memFill(bufA, 0x1000, 0xa5);
  t.memFill(bufB, 0x1000, 0xa5);
  t.clearFis();
  t.write(PxIS, 0xffffffff);
  t.build({
    slot: 0,
    fis: h2dFis({ command: ATA.IDENTIFY_DEVICE }),
    prds: [
      { addr: bufA, bytes: lenA },
      { addr: bufB, bytes: lenB },
    ],
  });
  t.issueAndWait(bit(0));
  t.comment(
    "PIO data-in ends with the E_Status of the PIO Setup FIS: BSY, DRQ and ERR clear (AHCI 1.3.1 §3.3.8, §5.3 PIO states)",
  );
  t.expectTfdOk();
  t.comment(
    "AHCI 1.3.1 §3.3.5: PSS is set, the device sends a PIO Setup FIS with I=1 for PIO data-in (SATA); DHRS is masked (a device need not send a D2H FIS after PIO data-in)",
  );
  t.expect(PxIS, IS_PSS, IS_PSS);
  t.comment("AHCI 1.3.1 §4.2.2: PRDBC holds the bytes transferred, 512");
  t.expectPrdbc(0, 512);
  t.comment(
    "AHCI 1.3.1 §4.2.1: the PIO Setup FIS (type 5Fh) is copied to FB+20h; its transfer count (bytes 16-17) is 512, one DRQ block (flags, status and E_Status bytes masked)",
  );
  t.memExpectHex(FB + RFIS_PIO, Uint8Array.of(0x5f));
  t.memExpectHex(FB + RFIS_PIO + 16, le16(512));

  const cap28 = Math.min(t.diskSectors, 0x0fffffff);
  t.comment(
    `ATA8-ACS IDENTIFY DEVICE words 60-61: user-addressable sectors for 28-bit commands = ${cap28}; words 100-103: for 48-bit commands = ${t.diskSectors} (the LBA48 capacity; LBA48 support itself is exercised by the READ DMA EXT traces)`,
  );
  t.memExpectHex(bufA + 120, le32(cap28));
  const cap48 = new Uint8Array(8);
  new DataView(cap48.buffer).setBigUint64(0, BigInt(t.diskSectors), true);
  t.memExpectHex(bufA + 200, cap48.subarray(0, 4));
  t.memExpectHex(bufB, cap48.subarray(4, 8));
  t.comment(
    "AHCI 1.3.1 §4.2.3: the HBA writes no byte past a PRD's byte count (A5h fill intact after both regions)",
  );
  t.memExpectHex(bufA + lenA, filled(16, 0xa5));
  t.memExpectHex(bufB + lenB, filled(16, 0xa5));
  t.comment(
    "not checkable with mem_expect (no mask in the format): word 0 bit 15 = 0, word 75 queue depth, word 76 bit 8 (NCQ), word 83 bit 10 (LBA48); see README",
  );
  return t;
}

function dmaReadMultiPrd(): Trace {
  const t = new Trace(
    "dma-read-multi-prd",
    "Checks READ DMA EXT scatter/gather (AHCI 1.3.1 §4.2.3): 24 sectors from LBA 1000 over three PRDs of 8, 4 and 12 sectors into non-contiguous buffers, then 4 sectors from LBA 777 over PRDs of 1280 and 768 bytes that split a sector; data by lba pattern per buffer, guard bytes after each region, PRDBC, PxIS.DHRS, the D2H FIS at FB+40h.",
  );
  t.hbaReset();
  t.initPort();

  const bufs = [
    { addr: DATA_BASE, bytes: 8 * SECTOR },
    { addr: DATA_BASE + 0x10000, bytes: 4 * SECTOR },
    { addr: DATA_BASE + 0x20000, bytes: 12 * SECTOR },
  ];
  for (const b of bufs) t.memFill(b.addr, b.bytes + 64, 0xee);
  t.clearFis();
  t.write(PxIS, 0xffffffff);
  t.build({ slot: 0, fis: dmaExt(ATA.READ_DMA_EXT, 1000, 24), prds: bufs });
  t.issueAndWait(bit(0));
  t.expectTfdOk();
  t.comment("AHCI 1.3.1 §3.3.5: DHRS set by the D2H Register FIS (I=1) that ends a DMA command");
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.expectD2hFis();
  t.comment("AHCI 1.3.1 §4.2.2: PRDBC = 24 * 512");
  t.expectPrdbc(0, 24 * SECTOR);
  t.comment("sectors 1000-1007, 1008-1011 and 1012-1023 land in PRD order");
  t.memExpectLba(bufs[0]!.addr, 1000, 8);
  t.memExpectLba(bufs[1]!.addr, 1008, 4);
  t.memExpectLba(bufs[2]!.addr, 1012, 12);
  t.comment("nothing written past each PRD region (EEh fill intact)");
  for (const b of bufs) t.memExpectHex(b.addr + b.bytes, filled(64, 0xee));

  t.comment(
    "PRD sizes need not be sector multiples (§4.2.3, DBC is a byte count): 1280 + 768 bytes, sector 779 split 256/256",
  );
  const c = DATA_BASE + 0x40000;
  const d = DATA_BASE + 0x48000;
  t.memFill(c, 1280 + 64, 0xee);
  t.memFill(d, 768 + 64, 0xee);
  t.build({
    slot: 5,
    fis: dmaExt(ATA.READ_DMA_EXT, 777, 4),
    prds: [
      { addr: c, bytes: 1280 },
      { addr: d, bytes: 768 },
    ],
  });
  t.issueAndWait(bit(5));
  t.expectTfdOk();
  t.expectPrdbc(5, 4 * SECTOR);
  const data = lbaPattern(777, 4);
  t.memExpectLba(c, 777, 2);
  t.memExpectHex(c + 1024, data.subarray(1024, 1280));
  t.memExpectHex(d, data.subarray(1280, 1536));
  t.memExpectLba(d + 256, 780, 1);
  t.memExpectHex(c + 1280, filled(64, 0xee));
  t.memExpectHex(d + 768, filled(64, 0xee));
  return t;
}

function dmaWriteRead(): Trace {
  const t = new Trace(
    "dma-write-read",
    "Checks WRITE DMA EXT from two PRDs (55h and C3h fills) then READ DMA EXT back into another buffer (sha256), the disk content and its untouched neighbours; WRITE DMA (CAh, 28-bit) and READ DMA (C8h, 28-bit) once each; READ DMA with COUNT=0 transfers 256 sectors (ATA8-ACS); after `finish` the written sectors still hold the guest's data.",
  );
  t.hbaReset();
  t.initPort();

  const w0 = DATA_BASE;
  const w1 = DATA_BASE + 0x10000;
  const r = DATA_BASE + 0x20000;
  const written = concat(filled(4096, 0x55), filled(4096, 0xc3));
  t.comment(
    "WRITE DMA EXT: 16 sectors at LBA 2000 from 4 KiB of 55h and 4 KiB of C3h; command header W=1 (§4.2.2)",
  );
  t.memFill(w0, 4096, 0x55);
  t.memFill(w1, 4096, 0xc3);
  t.write(PxIS, 0xffffffff);
  t.build({
    slot: 0,
    write: true,
    fis: dmaExt(ATA.WRITE_DMA_EXT, 2000, 16),
    prds: [
      { addr: w0, bytes: 4096 },
      { addr: w1, bytes: 4096 },
    ],
  });
  t.issueAndWait(bit(0));
  t.expectTfdOk();
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.comment("AHCI 1.3.1 §4.2.2: PRDBC counts bytes moved from memory to the device too");
  t.expectPrdbc(0, 8192);
  t.diskExpectSha(2000, written);
  t.comment("the neighbours of the written range keep the image content");
  t.diskExpectLba(1999, 1);
  t.diskExpectLba(2016, 1);

  t.comment("READ DMA EXT of the same 16 sectors into a zeroed buffer");
  t.memFill(r, 8192, 0);
  t.build({ slot: 1, fis: dmaExt(ATA.READ_DMA_EXT, 2000, 16), prds: [{ addr: r, bytes: 8192 }] });
  t.issueAndWait(bit(1));
  t.expectTfdOk();
  t.expectPrdbc(1, 8192);
  t.memExpectSha(r, written);

  t.comment(
    "WRITE DMA (CAh, 28-bit: LBA 27:24 in DEVICE 3:0): 4 sectors of 3Ch at LBA 4660, then READ DMA (C8h) back",
  );
  const w28 = DATA_BASE + 0x30000;
  const r28 = DATA_BASE + 0x38000;
  t.memFill(w28, 2048, 0x3c);
  t.build({ slot: 2, write: true, fis: dma28(ATA.WRITE_DMA, 4660, 4), prds: [{ addr: w28, bytes: 2048 }] });
  t.issueAndWait(bit(2));
  t.expectTfdOk();
  t.expectPrdbc(2, 2048);
  t.diskExpectSha(4660, filled(2048, 0x3c));
  t.memFill(r28, 2048, 0);
  t.build({ slot: 3, fis: dma28(ATA.READ_DMA, 4660, 4), prds: [{ addr: r28, bytes: 2048 }] });
  t.issueAndWait(bit(3));
  t.expectTfdOk();
  t.memExpectSha(r28, filled(2048, 0x3c));

  t.comment(
    "ATA8-ACS READ DMA: COUNT=00h means 256 sectors. 256 sectors from LBA 8192 into two 64 KiB PRDs; the last sector (8447) is at the end of the second buffer",
  );
  const big0 = 0x100000;
  const big1 = 0x120000;
  t.memFill(big0, 0x10000 + 64, 0xee);
  t.memFill(big1, 0x10000 + 64, 0xee);
  const fis = dma28(ATA.READ_DMA, 8192, 256);
  if (fis[12] !== 0) throw new Error("256 sectors must encode as COUNT 0");
  t.build({
    slot: 4,
    fis,
    prds: [
      { addr: big0, bytes: 0x10000 },
      { addr: big1, bytes: 0x10000 },
    ],
  });
  t.issueAndWait(bit(4));
  t.expectTfdOk();
  t.expectPrdbc(4, 256 * SECTOR);
  t.memExpectLba(big1 + 0x10000 - SECTOR, 8192 + 255, 1);
  t.memExpectLba(big0, 8192, 128);
  t.memExpectLba(big1, 8192 + 128, 128);
  t.memExpectHex(big1 + 0x10000, filled(64, 0xee));

  t.comment(
    "after `finish` (streaming: every block local, mediator gone) the guest's writes are still there",
  );
  t.finish();
  t.diskExpectSha(2000, written);
  t.diskExpectSha(4660, filled(2048, 0x3c));
  t.diskExpectLba(1999, 1);
  t.diskExpectLba(2016, 1);
  readAndCheck(t, 5, 30000, 8, DATA_BASE + 0x40000);
  return t;
}

function ncqMultiTag(): Trace {
  const t = new Trace(
    "ncq-multi-tag",
    "Checks native command queuing (AHCI 1.3.1 §3.3.13, §3.3.14, §4.2.1; SATA READ/WRITE FPDMA QUEUED): four READ FPDMA QUEUED with tags 0, 3, 17 and 31 issued by one PxSACT write and one PxCI write; PxCI and PxSACT drain, PxIS.SDBS, a Set Device Bits FIS (A1h) at FB+58h, every tag's data; then WRITE FPDMA QUEUED and a read back of it.",
  );
  t.hbaReset();
  t.initPort();

  t.comment(
    "NCQ FIS (SATA READ FPDMA QUEUED): count in FEATURES 7:0/15:8, tag in COUNT 7:3, DEVICE bit 6 = 1; the tag equals the command slot (AHCI 1.3.1 §3.3.13: PxSACT bit n is TAG n and command slot n)",
  );
  const cmds = [
    { tag: 0, lba: 100, prds: [{ addr: DATA_BASE, bytes: 8 * SECTOR }] },
    {
      tag: 3,
      lba: 5000,
      prds: [
        { addr: DATA_BASE + 0x10000, bytes: 6 * SECTOR },
        { addr: DATA_BASE + 0x18000, bytes: 10 * SECTOR },
      ],
    },
    { tag: 17, lba: 40000, prds: [{ addr: DATA_BASE + 0x20000, bytes: SECTOR }] },
    { tag: 31, lba: DISK_SECTORS - 8, prds: [{ addr: DATA_BASE + 0x30000, bytes: 8 * SECTOR }] },
  ];
  let mask = 0;
  for (const c of cmds) {
    const sectors = c.prds.reduce((n, p) => n + p.bytes, 0) / SECTOR;
    for (const p of c.prds) t.memFill(p.addr, p.bytes + 64, 0xee);
    t.build({ slot: c.tag, fis: fpdma(ATA.READ_FPDMA_QUEUED, c.tag, c.lba, sectors), prds: c.prds });
    mask |= bit(c.tag);
  }
  mask = u32(mask);
  t.clearFis();
  t.write(PxIS, 0xffffffff);
  t.comment(`PxSACT then PxCI with the same bits (${hexNum(mask)}), each written once`);
  t.issueNcq(mask);
  t.comment(
    "AHCI 1.3.1 §3.3.13: each PxSACT bit clears when the device's Set Device Bits FIS reports that tag done; §3.3.14: PxCI bits clear when the device accepts the commands (D2H FIS with BSY=0)",
  );
  t.poll(PxSACT, mask, 0);
  t.poll(PxCI, mask, 0);
  t.expectTfdOk();
  t.comment("AHCI 1.3.1 §3.3.5: SDBS (SDB FIS with I=1); §4.2.1: the SDB FIS (type A1h) is copied to FB+58h");
  t.expect(PxIS, IS_SDBS, IS_SDBS);
  t.memExpectHex(FB + RFIS_SDB, Uint8Array.of(0xa1));
  t.comment(
    "every tag's data, in PRD order (PRDBC is not checked: §4.2.2 does not require it for queued commands)",
  );
  for (const c of cmds) {
    let lba = c.lba;
    for (const p of c.prds) {
      t.memExpectLba(p.addr, lba, p.bytes / SECTOR);
      t.memExpectHex(p.addr + p.bytes, filled(64, 0xee));
      lba += p.bytes / SECTOR;
    }
  }

  t.comment("WRITE FPDMA QUEUED, tag 5: 8 sectors of 77h at LBA 30000 (header W=1)");
  const wbuf = DATA_BASE + 0x40000;
  const rbuf = DATA_BASE + 0x48000;
  t.memFill(wbuf, 4096, 0x77);
  t.write(PxIS, 0xffffffff);
  t.clearFis();
  t.build({
    slot: 5,
    write: true,
    fis: fpdma(ATA.WRITE_FPDMA_QUEUED, 5, 30000, 8),
    prds: [{ addr: wbuf, bytes: 4096 }],
  });
  t.issueNcq(bit(5));
  t.poll(PxSACT, bit(5), 0);
  t.poll(PxCI, bit(5), 0);
  t.expectTfdOk();
  t.expect(PxIS, IS_SDBS, IS_SDBS);
  t.memExpectHex(FB + RFIS_SDB, Uint8Array.of(0xa1));
  t.diskExpectSha(30000, filled(4096, 0x77));
  t.diskExpectLba(29999, 1);
  t.diskExpectLba(30008, 1);
  t.comment("READ FPDMA QUEUED, tag 9, reads it back");
  t.memFill(rbuf, 4096, 0);
  t.build({ slot: 9, fis: fpdma(ATA.READ_FPDMA_QUEUED, 9, 30000, 8), prds: [{ addr: rbuf, bytes: 4096 }] });
  t.issueNcq(bit(9));
  t.poll(PxSACT, bit(9), 0);
  t.poll(PxCI, bit(9), 0);
  t.expectTfdOk();
  t.memExpectSha(rbuf, filled(4096, 0x77));
  return t;
}

function flush(): Trace {
  const t = new Trace(
    "flush",
    "Checks FLUSH CACHE EXT (EAh) and FLUSH CACHE (E7h), non-data commands with PRDTL=0: PxCI clears, PxTFD BSY/DRQ/ERR clear, PxIS.DHRS and a D2H FIS at FB+40h; data written before the flushes is on the disk.",
  );
  t.hbaReset();
  t.initPort();

  t.comment("something to flush: WRITE DMA EXT of 8 sectors of 9Ah at LBA 12345");
  t.memFill(DATA_BASE, 4096, 0x9a);
  t.build({
    slot: 0,
    write: true,
    fis: dmaExt(ATA.WRITE_DMA_EXT, 12345, 8),
    prds: [{ addr: DATA_BASE, bytes: 4096 }],
  });
  t.issueAndWait(bit(0));
  t.expectTfdOk();

  for (const [name, command, slot] of [
    ["FLUSH CACHE EXT (EAh)", ATA.FLUSH_CACHE_EXT, 1],
    ["FLUSH CACHE (E7h)", ATA.FLUSH_CACHE, 2],
  ] as const) {
    t.comment(`${name}: no data, PRDTL=0`);
    t.clearFis();
    t.write(PxIS, 0xffffffff);
    t.build({ slot, fis: h2dFis({ command }), prds: [] });
    t.issueAndWait(bit(slot));
    t.comment("ATA8-ACS: normal completion; AHCI 1.3.1 §3.3.8: PxTFD.STS BSY, DRQ and ERR clear");
    t.expectTfdOk();
    t.comment("AHCI 1.3.1 §3.3.5: DHRS from the D2H Register FIS (I=1) ending the non-data command");
    t.expect(PxIS, IS_DHRS, IS_DHRS);
    t.expectD2hFis();
  }
  t.diskExpectSha(12345, filled(4096, 0x9a));
  return t;
}

function interruptGating(): Trace {
  const t = new Trace(
    "interrupt-gating",
    "Checks the interrupt stages (AHCI 1.3.1 §10.7, §3.1.2 GHC.IE, §3.1.3 IS, §3.3.5/§3.3.6 PxIS/PxIE): with GHC.IE=0 no interrupt though PxIS&PxIE is set; setting GHC.IE raises it; IS.IPS re-latches while PxIS&PxIE is still set; clearing PxIS then IS drops it; with PxIE=0 a completion raises nothing; enabling PxIE over an already-set PxIS bit raises it.",
  );
  t.hbaReset();
  t.initPort();
  t.comment("GHC.IE=0, PxIE.DHRE=1; a completion sets PxIS.DHRS");
  t.write(GHC, GHC_AE);
  t.write(PxIE, IS_DHRS);
  t.irq(false);
  readAndCheck(t, 0, 200, 1, DATA_BASE);
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.comment(
    "AHCI 1.3.1 §10.7: PxIS.DHRS & PxIE.DHRE sets IS.IPS[0]; §3.1.2: with GHC.IE=0 no interrupt is signalled",
  );
  t.expect(IS, 0x1, 0x1);
  t.irq(false);
  t.comment("§3.1.2/§3.3.6: GHC.IE=1 with PxIS.DHRS & PxIE.DHRE and IS.IPS[0] set: the interrupt is pending");
  t.write(GHC, GHC_AE | GHC_IE);
  t.irq(true);
  t.comment(
    "§10.7: IS.IPS is a level-triggered latch: clearing IS while PxIS & PxIE is still set leaves IS.IPS[0] set and the interrupt pending",
  );
  t.write(IS, 0x1);
  t.expect(IS, 0x1, 0x1);
  t.irq(true);
  t.comment(
    "clear the source (PxIS), then IS.IPS[0]: the line drops (the state between the two writes is not checked: QEMU recomputes IS from PxIS&PxIE, the spec latches it)",
  );
  t.write(PxIS, IS_DHRS);
  t.write(IS, 0x1);
  t.expect(IS, 0, 0x1);
  t.expect(PxIS, 0, IS_DHRS);
  t.irq(false);

  t.comment("PxIE=0: a completion sets PxIS.DHRS but neither IS.IPS[0] nor an interrupt (§3.3.6)");
  t.write(PxIE, 0);
  readAndCheck(t, 0, 201, 1, DATA_BASE);
  t.expect(PxIS, IS_DHRS, IS_DHRS);
  t.write(IS, 0x1);
  t.expect(IS, 0, 0x1);
  t.irq(false);
  t.comment(
    "§3.3.6 DHRE: 'when set, GHC.IE is set, and PxIS.DHRS is set, the HBA shall generate an interrupt': enabling PxIE over a set PxIS bit raises it",
  );
  t.write(PxIE, IS_DHRS);
  t.expect(IS, 0x1, 0x1);
  t.irq(true);
  t.comment("GHC.IE=0 masks it again, GHC.IE=1 brings it back (status untouched)");
  t.write(GHC, GHC_AE);
  t.irq(false);
  t.write(GHC, GHC_AE | GHC_IE);
  t.irq(true);
  t.comment("clear PxIS then IS: no interrupt");
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.irq(false);
  t.comment("a further completion with everything enabled raises it once more; the handler's clears drop it");
  readAndCheck(t, 0, 202, 1, DATA_BASE);
  t.irq(true);
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.irq(false);
  return t;
}

function outOfRange(): Trace {
  const last = DISK_SECTORS - 1;
  const t = new Trace(
    "out-of-range",
    `Checks a device error on a non-queued command: READ DMA EXT of 2 sectors at LBA ${last} (crosses the end of the disk) ends with PxIS.TFES, PxTFD.STS.ERR=1 with BSY/DRQ clear, and its PxCI bit still set (HBA stopped, AHCI 1.3.1 §5.3.16.5, §6.2.2); recovery per §6.2.2.1 (ST=0 clears PxCI, clear SERR/IS, ST=1), then a valid read of the last two sectors succeeds.`,
  );
  t.hbaReset();
  t.initPort();
  t.memFill(DATA_BASE, 2048, 0xee);
  t.clearFis();
  t.write(PxIS, 0xffffffff);
  t.comment(`READ DMA EXT LBA ${last}, 2 sectors: sector ${last + 1} does not exist`);
  t.build({
    slot: 3,
    fis: dmaExt(ATA.READ_DMA_EXT, last, 2),
    prds: [{ addr: DATA_BASE, bytes: 2 * SECTOR }],
  });
  t.write(PxCI, bit(3));
  t.comment(
    "AHCI 1.3.1 §3.3.5: TFES is set when a D2H FIS arrives with STS.ERR=1 (ATA8-ACS: the device reports IDNF or ABRT; the ERR field is not checked)",
  );
  t.poll(PxIS, IS_TFES, IS_TFES);
  t.comment("AHCI 1.3.1 §3.3.8: PxTFD.STS.ERR=1, BSY=0, DRQ=0");
  t.expect(PxTFD, STS_ERR, STS_BUSY_MASK);
  t.comment(
    "AHCI 1.3.1 §5.3.16.5 ERR:FatalTaskfile, §6.2.2: the HBA stops; PxCI of the failed slot stays set so software can find it (§3.3.14: only an FIS clearing BSY, DRQ and ERR clears it)",
  );
  t.expect(PxCI, bit(3), bit(3));
  t.expect(PxCMD, CMD_CR | CMD_ST, CMD_CR | CMD_ST);
  t.comment(
    "the data, PRDBC and the D2H FIS contents of the failed command are not checked (a device may move part of the data)",
  );
  t.recover();
  t.comment("the port works again: READ DMA EXT of the last two sectors");
  readAndCheck(t, 3, DISK_SECTORS - 2, 2, DATA_BASE + 0x1000);
  t.expect(PxIS, 0, IS_TFES);
  return t;
}

function setFeaturesNondata(): Trace {
  const t = new Trace(
    "set-features-nondata",
    "Checks SET FEATURES (EFh) subcommand 03h (set transfer mode) with COUNT 00h (PIO default mode, which every ATA device supports): a non-data command that completes with a D2H FIS, PxIS.DHRS, PxTFD clean and PxCI clear; a DMA read works afterwards.",
  );
  t.hbaReset();
  t.initPort();
  t.clearFis();
  t.write(PxIS, 0xffffffff);
  t.comment("ATA8-ACS SET FEATURES: FEATURES=03h (set transfer mode), COUNT=00h (PIO default mode); PRDTL=0");
  t.build({ slot: 0, fis: h2dFis({ command: ATA.SET_FEATURES, features: 0x03, count: 0x00 }), prds: [] });
  t.issueAndWait(bit(0));
  t.expectTfdOk();
  t.comment("AHCI 1.3.1 §3.3.5: DHRS from the ending D2H Register FIS; no TFES");
  t.expect(PxIS, IS_DHRS, IS_DHRS | IS_TFES);
  t.expectD2hFis();
  readAndCheck(t, 1, 300, 4, DATA_BASE);
  return t;
}

function unknownCommand(): Trace {
  const t = new Trace(
    "unknown-command",
    "Checks that a command the device does not implement is aborted and the port recovers: vendor-specific F0h (no data) and NOP (00h, subcommand 00h, which ATA8-ACS says the device shall abort) each end with PxIS.TFES, PxTFD.STS.ERR=1 and ERR.ABRT=1, PxCI still set; recovery per AHCI 1.3.1 §6.2.2.1; a valid READ DMA EXT then succeeds.",
  );
  t.hbaReset();
  t.initPort();

  for (const [name, command, slot] of [
    ["vendor-specific F0h", ATA.VENDOR_F0, 1],
    ["NOP 00h with subcommand (FEATURES) 00h", ATA.NOP, 4],
  ] as const) {
    t.comment(`${name}, PRDTL=0`);
    t.clearFis();
    t.write(PxIS, 0xffffffff);
    t.build({ slot, fis: h2dFis({ command }), prds: [] });
    t.write(PxCI, bit(slot));
    t.comment("AHCI 1.3.1 §3.3.5: TFES (the D2H FIS carries STS.ERR=1)");
    t.poll(PxIS, IS_TFES, IS_TFES);
    t.comment(
      "ATA8-ACS: an unsupported command is aborted: STS.ERR=1 and ERR.ABRT (bit 2 of the ERR field, PxTFD bit 10); BSY/DRQ clear; other ERR bits masked",
    );
    t.expect(PxTFD, (ERR_ABRT << 8) | STS_ERR, (ERR_ABRT << 8) | STS_BUSY_MASK);
    t.comment("AHCI 1.3.1 §6.2.2: PxCI of the failed slot stays set");
    t.expect(PxCI, bit(slot), bit(slot));
    t.comment("AHCI 1.3.1 §4.2.1: the error D2H FIS (34h) is at FB+40h");
    t.memExpectHex(FB + RFIS_D2H, Uint8Array.of(0x34));
    t.recover();
  }
  t.comment("the port works again");
  readAndCheck(t, 0, 400, 2, DATA_BASE);
  t.expect(PxIS, 0, IS_TFES);
  return t;
}

function identifyThenNcqLikeLinux(): Trace {
  const disk = 131072;
  const t = new Trace(
    "identify-then-ncq-like-linux",
    "Replays, condensed, the order in which Linux 6.1 libahci brings up port 0 (shared/data/linux-ahci-init.txt): save_initial_config reads, HBA reset, port stop and SERR/IS clears, GHC.IE, CLB/FB, ICC active + FRE + ST, engine stop, SCTL hardreset, SSTS/TFD/SIG, ST, PxIE=7840007Fh, IDENTIFY, SET FEATURES (xfer mode), IDENTIFY, then READ FPDMA QUEUED tag 11 at LBA 0 and an isolated one at LBA 69896, each with the interrupt handler's IS/PxIS/PxSACT sequence.",
    { diskSectors: disk },
  );
  t.comment(
    "ahci_save_initial_config: reads of CAP, GHC, VS, PI and P0.CMD (values not checked: implementation-defined)",
  );
  t.read(CAP);
  t.read(GHC);
  t.read(VS);
  t.read(PI);
  t.read(PxCMD);

  t.comment("ahci_reset_controller: AE, then HR with AE, poll HR, AE (AHCI 1.3.1 §10.4.3)");
  t.write(GHC, GHC_AE);
  t.write(GHC, GHC_AE | GHC_HR);
  t.poll(GHC, GHC_HR, 0);
  t.write(GHC, GHC_AE);
  t.expect(GHC, GHC_AE, GHC_AE | GHC_HR);

  t.comment("ahci_port_init: stop the engines, clear PxSERR, PxIS and IS.IPS[0]");
  t.write(PxCMD, CMD_IDLE);
  t.poll(PxCMD, CMD_CR | CMD_FR, 0);
  t.write(PxSERR, 0xffffffff);
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.comment("ahci_init_controller: GHC.IE=1");
  t.write(GHC, GHC_AE | GHC_IE);
  t.expect(GHC, GHC_AE | GHC_IE, GHC_AE | GHC_IE | GHC_HR);

  t.comment(
    "ahci_port_resume: ICC=1 (active) with SUD/POD, CLB/FB, FRE, then ST (ahci_start_engine); PxIE=0 while the port is frozen",
  );
  t.write(PxCMD, 0x10000000 | CMD_IDLE);
  t.memFill(CLB, 1024, 0);
  t.memFill(FB, 256, 0);
  t.write(PxCLBU, 0);
  t.write(PxCLB, CLB);
  t.write(PxFBU, 0);
  t.write(PxFB, FB);
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_FR, CMD_FR);
  t.comment(
    "Linux relies on the link the HBA reset brought up; the trace waits for it (DET=3, BSY/DRQ clear) before ST, as AHCI 1.3.1 §10.3.1 requires",
  );
  t.poll(PxSSTS, 0xf, 0x3);
  t.poll(PxTFD, STS_BSY | STS_DRQ, 0);
  t.write(PxCMD, CMD_IDLE | CMD_FRE | CMD_ST);
  t.poll(PxCMD, CMD_CR, CMD_CR);
  t.write(PxIE, 0);

  t.comment(
    "ahci_hardreset: stop the DMA engine (ST=0, wait CR=0), clear SERR/IS, SCTL=301h then 300h (COMRESET, IPM=3), wait for the link and the device",
  );
  t.write(PxCMD, CMD_IDLE | CMD_FRE);
  t.poll(PxCMD, CMD_CR, 0);
  t.write(PxSERR, 0xffffffff);
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.comreset(3);
  t.expect(PxSSTS, 0x3, 0xf);
  t.comment(
    "ahci_start_engine, then the port is thawed: clear PxIS and IS.IPS[0], PxIE = DEF_PORT_IRQ (7840007Fh)",
  );
  t.startPort();
  t.write(PxSERR, 0xffffffff);
  t.write(PxIS, 0xffffffff);
  t.write(IS, 0x1);
  t.write(PxIE, 0x7840007f);
  t.irq(false);

  const idBuf = DATA_BASE;
  const identifyOnce = (label: string): void => {
    t.comment(
      `${label}: IDENTIFY DEVICE in slot 0, one 512-byte PRD; the PIO Setup FIS (I=1) raises PxIS.PSS and the interrupt`,
    );
    t.memFill(idBuf, 1024, 0xa5);
    t.build({ slot: 0, fis: h2dFis({ command: ATA.IDENTIFY_DEVICE }), prds: [{ addr: idBuf, bytes: 512 }] });
    t.write(PxCI, 0x1);
    t.poll(PxCI, 0x1, 0);
    t.comment("interrupt handler: IS, PxIS (PSS set), clear PxIS, PxCI, clear IS");
    t.irq(true);
    t.expect(IS, 0x1, 0x1);
    t.expect(PxIS, IS_PSS, IS_PSS | IS_TFES);
    t.write(PxIS, 0xffffffff);
    t.expect(PxCI, 0);
    t.write(IS, 0x1);
    t.irq(false);
    t.expectTfdOk();
    t.expectPrdbc(0, 512);
    t.comment(`ATA8-ACS IDENTIFY DEVICE words 60-61 and 100-103: ${disk} sectors`);
    t.memExpectHex(idBuf + 120, le32(disk));
    t.memExpectHex(idBuf + 200, concat(le32(disk), le32(0)));
    t.memExpectHex(idBuf + 512, filled(16, 0xa5));
  };
  identifyOnce("ata_dev_read_id");

  t.comment(
    "ata_dev_set_xfermode: SET FEATURES 03h with COUNT 45h (UDMA mode 5, what libata picks on QEMU: IDENTIFY word 88 = 3Fh); non-data, ends with a D2H FIS (I=1)",
  );
  t.build({ slot: 0, fis: h2dFis({ command: ATA.SET_FEATURES, features: 0x03, count: 0x45 }), prds: [] });
  t.write(PxCI, 0x1);
  t.poll(PxCI, 0x1, 0);
  t.irq(true);
  t.expect(IS, 0x1, 0x1);
  t.expect(PxIS, IS_DHRS, IS_DHRS | IS_TFES);
  t.write(PxIS, 0xffffffff);
  t.expect(PxCI, 0);
  t.write(IS, 0x1);
  t.irq(false);
  t.expectTfdOk();

  identifyOnce("ata_dev_revalidate");

  const ncq = (tag: number, lba: number, buf: number): void => {
    t.memFill(buf, 4096 + 64, 0xee);
    t.build({
      slot: tag,
      fis: fpdma(ATA.READ_FPDMA_QUEUED, tag, lba, 8),
      prds: [{ addr: buf, bytes: 4096 }],
    });
    t.write(PxSACT, bit(tag));
    t.write(PxCI, bit(tag));
    t.poll(PxSACT, bit(tag), 0);
    t.comment(
      "interrupt handler: IS, PxIS (SDBS: the Set Device Bits FIS has I=1), clear PxIS, read PxSACT (tag done), clear IS",
    );
    t.irq(true);
    t.expect(IS, 0x1, 0x1);
    t.expect(PxIS, IS_SDBS, IS_SDBS | IS_TFES);
    t.write(PxIS, 0xffffffff);
    t.expect(PxSACT, 0, bit(tag));
    t.write(IS, 0x1);
    t.irq(false);
    t.expect(PxCI, 0, bit(tag));
    t.expectTfdOk();
    t.memExpectLba(buf, lba, 8);
    t.memExpectHex(buf + 4096, filled(64, 0xee));
  };
  t.comment("first NCQ command: READ FPDMA QUEUED tag 11 (slot 11), LBA 0, 8 sectors");
  ncq(11, 0, DATA_BASE + 0x10000);
  t.comment("an isolated NCQ read later in the boot: tag 11, LBA 69896, 8 sectors");
  ncq(11, 69896, DATA_BASE + 0x20000);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

const builders: Array<() => Trace> = [
  hbaReset,
  registerAccess,
  portInitComreset,
  identify,
  dmaReadMultiPrd,
  dmaWriteRead,
  ncqMultiTag,
  flush,
  interruptGating,
  outOfRange,
  setFeaturesNondata,
  unknownCommand,
  identifyThenNcqLikeLinux,
];

function main(argv: string[]): number {
  const check = argv.includes("--check");
  const outDir = join(dirname(fileURLToPath(import.meta.url)), "traces");
  const traces = builders.map((b) => b());
  const files = new Map(traces.map((t) => [`${t.name}.trace.jsonl`, t.text()]));
  if (files.size !== traces.length) throw new Error("duplicate trace names");

  const existing = existsSync(outDir) ? readdirSync(outDir).filter((f) => f.endsWith(".trace.jsonl")) : [];
  if (check) {
    const problems: string[] = [];
    for (const [file, text] of files) {
      const path = join(outDir, file);
      if (!existsSync(path)) problems.push(`missing: ${file}`);
      else if (readFileSync(path, "utf8") !== text) problems.push(`differs: ${file}`);
    }
    for (const f of existing) if (!files.has(f)) problems.push(`not generated: ${f}`);
    for (const p of problems) console.error(p);
    console.log(
      problems.length === 0
        ? `${files.size} traces up to date`
        : "run: npx tsx test/conformance/build-traces.ts",
    );
    return problems.length === 0 ? 0 : 1;
  }

  mkdirSync(outDir, { recursive: true });
  for (const f of existing) if (!files.has(f)) rmSync(join(outDir, f));
  for (const [file, text] of files) writeFileSync(join(outDir, file), text);
  for (const t of traces) {
    const checks = t
      .text()
      .split("\n")
      .filter((l) => /"op": "(poll|mem_expect|irq|disk_expect)"|"expect":/.test(l)).length;
    console.log(`${t.name}.trace.jsonl  ${checks} expectations`);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
