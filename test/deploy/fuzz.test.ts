/**
 * Fuzzing the generated AHCI mediator with a hostile guest: random command headers, command
 * tables, FISes and descriptor tables, with DMA addresses in guest RAM, in the VMM's reserved
 * memory, across the boundary and beyond RAM, random PRDTL (0 .. 65535), random CFL, wrong FIS
 * types, issued through PxSACT/PxCI. The VMM must keep running (no exception out of an MMIO
 * access), its memory must stay untouched, refused pointers must be counted and reported to the
 * guest as host bus fatal errors, nothing may hang, and a port restart must bring back a working
 * port. Set FUZZ_SEED to replay a failing seed (fast-check prints it on failure).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeAtaCommand,
  decodeRegH2DFis,
  HOST_BASE,
  HOST_GHC,
  HOST_IS,
  PORT_CI,
  PORT_CLB,
  PORT_CLBU,
  PORT_CMD,
  PORT_FB,
  PORT_FBU,
  PORT_IE,
  PORT_IS,
  PORT_SACT,
  PORT_SERR,
  PORT_SIG,
  PORT_SSTS,
  PORT_TFD,
  portOffset,
} from "../../generated/ahci/index.ts";
import { OverlayBackend } from "../../runtime/block/overlay.ts";
import { fillLbaPattern, PatternSource } from "../../runtime/block/pattern.ts";
import { Machine } from "../../runtime/machine.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { GuestMemory } from "../../runtime/vmx/memory.ts";
import { type StreamingSetup, streamingSetup, withTimeout } from "./helpers.ts";

const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);

const GUEST_RAM = 4 * 1024 * 1024;
const VMM_BYTES = 1024 * 1024;
const TOTAL_RAM = GUEST_RAM + VMM_BYTES;
const DISK_SECTORS = 4096;

/** The guest's own layout: command list, received-FIS area, a buffer for the checking command. */
const CLB = 0x10000;
const FB = 0x11000;
const CHECK_TABLE = 0x12000;
const CHECK_BUFFER = 0x13000;

const ST = 0x1;
const CLO = 0x8;
const FRE = 0x10;
const FR = 0x4000;
const CR = 0x8000;
const GHC_AE = 0x80000000;
const GHC_IE = 0x2;
const IS_TFES = 1 << 30;
const IS_HBFS = 1 << 29;
const IS_HBDS = 1 << 28;
const IS_IFS = 1 << 27;
const IS_ERRORS = (IS_TFES | IS_HBFS | IS_HBDS | IS_IFS) >>> 0;

// ---- the machine, as a hostile guest sees it -------------------------------------------------------

interface Rig {
  readonly machine: Machine;
  readonly clock: VirtualClock;
  /** Byte ranges of VMM memory that nothing may change (all of it, or what the mediator never uses). */
  readonly guarded: readonly { readonly base: number; readonly length: number }[];
  readonly streaming: StreamingSetup | null;
  readDisk(lba: number, count: number): Promise<Uint8Array>;
}

function passthroughRig(latencyMs = 0): Rig {
  const clock = new VirtualClock();
  const disk = new OverlayBackend(new PatternSource(DISK_SECTORS, "lba"));
  const machine = new Machine({
    disks: [disk],
    mediated: true,
    clock,
    ramMiB: GUEST_RAM / 1024 / 1024,
    vmmBytes: VMM_BYTES,
    latencyMs,
  });
  const vmm = ram(machine).vmmRegion!;
  fillNoise(machine, vmm.base, vmm.length);
  return {
    machine,
    clock,
    guarded: [{ base: vmm.base, length: vmm.length }],
    streaming: null,
    readDisk: (lba, count) => disk.read(lba, count),
  };
}

function streamingRig(): Rig {
  const clock = new VirtualClock();
  // 2 MiB at 4 MiB/s: most rounds run while the image streams, the last ones after.
  const s = streamingSetup({
    sectors: DISK_SECTORS,
    clock,
    blockBytes: 16 * 1024,
    ramMiB: 4,
    linkBytesPerSecond: 4 * 1024 * 1024,
    latencyMs: 1,
  });
  const vmm = ram(s.machine).vmmRegion!;
  // The mediator works in port 0's area, the shared tables and the start of the own buffer (the
  // rest of VMM memory): a batch of own writes carries at most the whole 2 MiB image (each command
  // rounded up to 4 KiB). Unused: the other ports' areas and the buffer beyond that.
  const bufferStart = vmm.base + vmm.length - s.machine.mediator!.bufferBytes();
  const bufferUsed = DISK_SECTORS * 512 + 64 * 1024;
  fillNoise(s.machine, vmm.base, vmm.length);
  s.engine.start();
  return {
    machine: s.machine,
    clock,
    guarded: [
      unusedPortAreas(vmm.base),
      { base: bufferStart + bufferUsed, length: vmm.base + vmm.length - bufferStart - bufferUsed },
    ],
    streaming: s,
    readDisk: (lba, count) => s.engine.readAsGuest(lba, count, (l, c) => s.local.read(l, c)),
  };
}

/** The machine's RAM as an array (these rigs build their machines on a GuestMemory). */
function ram(machine: Machine): GuestMemory {
  if (!(machine.memory instanceof GuestMemory)) throw new Error("the rig's machine has no GuestMemory");
  return machine.memory;
}

/** Fills [base, base+length) with deterministic non-zero noise, so any DMA into it shows. */
function fillNoise(machine: Machine, base: number, length: number): void {
  const bytes = ram(machine).bytes;
  let x = 0x9e3779b9;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[base + i] = (x & 0xff) | 1;
  }
}

function guardedBytes(rig: Rig): Uint8Array[] {
  const bytes = ram(rig.machine).bytes;
  return rig.guarded.map(({ base, length }) => bytes.subarray(base, base + length));
}

function snapshot(rig: Rig): Uint8Array[] {
  return guardedBytes(rig).map((range) => range.slice());
}

function firstChange(rig: Rig, before: readonly Uint8Array[]): string | null {
  const now = guardedBytes(rig);
  for (const [r, range] of now.entries()) {
    const then = before[r]!;
    if (Buffer.compare(range, then) === 0) continue;
    let i = 0;
    while (range[i] === then[i]) i++;
    let changed = 0;
    for (let j = i; j < range.length; j++) if (range[j] !== then[j]) changed++;
    return `VMM memory changed: ${changed} bytes from 0x${(rig.guarded[r]!.base + i).toString(16)}`;
  }
  return null;
}

const reg = (rig: Rig, offset: number) => rig.machine.mmioRead(rig.machine.abar + offset, 4) >>> 0;
const setReg = (rig: Rig, offset: number, value: number) =>
  rig.machine.mmioWrite(rig.machine.abar + offset, 4, value >>> 0);
const P = (register: number) => portOffset(0, register);

/** libahci-like bring-up of port 0 with the guest's lists at CLB/FB. */
async function bringUp(rig: Rig): Promise<void> {
  setReg(rig, HOST_BASE + HOST_GHC, GHC_AE);
  setReg(rig, HOST_BASE + HOST_GHC, GHC_AE | 1); // HBA reset
  await waitFor(rig, () => (reg(rig, HOST_BASE + HOST_GHC) & 1) === 0, "GHC.HR to clear");
  setReg(rig, HOST_BASE + HOST_GHC, GHC_AE);
  rig.machine.memory.fill(CLB, 0x1000, 0);
  rig.machine.memory.fill(FB, 0x100, 0);
  setReg(rig, P(PORT_CLBU), 0);
  setReg(rig, P(PORT_CLB), CLB);
  setReg(rig, P(PORT_FBU), 0);
  setReg(rig, P(PORT_FB), FB);
  setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | FRE);
  await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & FR) !== 0, "PxCMD.FR");
  setReg(rig, P(PORT_SERR), 0xffffffff);
  setReg(rig, P(PORT_IS), 0xffffffff);
  setReg(rig, HOST_BASE + HOST_IS, 0xffffffff);
  setReg(rig, P(PORT_IE), 0xffffffff);
  setReg(rig, HOST_BASE + HOST_GHC, GHC_AE | GHC_IE);
  setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | ST);
}

/** Engine off (dropping every command), errors cleared, BSY/DRQ overridden, engine on. */
async function restartPort(rig: Rig): Promise<void> {
  setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
  await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CR) === 0, "PxCMD.CR to clear");
  setReg(rig, P(PORT_SERR), 0xffffffff);
  setReg(rig, P(PORT_IS), 0xffffffff);
  setReg(rig, HOST_BASE + HOST_IS, 0xffffffff);
  // Lists and FIS reception as a driver keeps them (a fuzzed round may have moved them).
  setReg(rig, P(PORT_CLBU), 0);
  setReg(rig, P(PORT_CLB), CLB);
  setReg(rig, P(PORT_FBU), 0);
  setReg(rig, P(PORT_FB), FB);
  setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | FRE);
  if ((reg(rig, P(PORT_TFD)) & 0x88) !== 0) {
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | CLO);
    await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CLO) === 0, "PxCMD.CLO to clear");
  }
  setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | ST);
}

async function waitFor(rig: Rig, done: () => boolean, what: string, ms = 2000): Promise<void> {
  const start = rig.clock.now();
  while (!done()) {
    if (rig.clock.now() - start > ms) throw new Error(`timed out (${ms} clock ms) waiting for ${what}`);
    await rig.clock.sleep(0.5);
  }
}

// ---- structures in guest memory ---------------------------------------------------------------------

interface Prd {
  readonly address: number;
  /** DW3: byte count - 1 in bits 21:0, interrupt bit 31, reserved bits as the guest likes. */
  readonly dw3: number;
}

interface FuzzCommand {
  readonly slot: number;
  readonly dw0: number;
  readonly prdbc: number;
  readonly table: number;
  readonly fis: Uint8Array;
  readonly prds: readonly Prd[];
  readonly queued: boolean;
}

function u32(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
}

/** Writes header, table and PRDT; a table outside guest RAM is not written (the guest cannot). */
function writeCommand(rig: Rig, c: FuzzCommand): void {
  const mem = rig.machine.memory;
  const header = new Uint8Array(32);
  const hv = new DataView(header.buffer);
  u32(hv, 0, c.dw0);
  u32(hv, 4, c.prdbc);
  u32(hv, 8, c.table % 2 ** 32);
  u32(hv, 12, Math.floor(c.table / 2 ** 32));
  mem.write(CLB + c.slot * 32, header);
  const table = new Uint8Array(0x80 + c.prds.length * 16);
  table.set(c.fis.subarray(0, 0x40), 0);
  const tv = new DataView(table.buffer);
  for (const [i, prd] of c.prds.entries()) {
    u32(tv, 0x80 + i * 16, prd.address % 2 ** 32);
    u32(tv, 0x84 + i * 16, Math.floor(prd.address / 2 ** 32));
    u32(tv, 0x8c + i * 16, prd.dw3);
  }
  if (Number.isSafeInteger(c.table) && c.table >= 0 && c.table + table.length <= GUEST_RAM)
    mem.write(c.table, table);
}

function isGuest(address: number, length: number): boolean {
  return Number.isSafeInteger(address) && address >= 0 && address + length <= GUEST_RAM;
}

/**
 * The specification of the mediator's check, read from guest memory as the command stands when
 * issued: "refused" when its table or any of its PRDTL descriptors leaves guest RAM ("counted":
 * an address check failed, not just the table's alignment).
 */
function expectedCheck(rig: Rig, slot: number): { refused: boolean; counted: boolean } {
  const mem = rig.machine.memory;
  const header = mem.read(CLB + slot * 32, 32);
  const hv = new DataView(header.buffer);
  const dw0 = hv.getUint32(0, true);
  const table = hv.getUint32(8, true) + hv.getUint32(12, true) * 2 ** 32;
  const entries = dw0 >>> 16;
  if (table % 128 !== 0) return { refused: true, counted: false };
  if (!isGuest(table, 0x80 + entries * 16)) return { refused: true, counted: true };
  const prdt = mem.read(table + 0x80, entries * 16);
  const pv = new DataView(prdt.buffer);
  for (let i = 0; i < entries; i++) {
    const address = pv.getUint32(i * 16, true) + pv.getUint32(i * 16 + 4, true) * 2 ** 32;
    const length = (pv.getUint32(i * 16 + 12, true) & 0x3fffff) + 1;
    if (!isGuest(address, length)) return { refused: true, counted: true };
  }
  // A queued command whose FIS tag is not its slot (two headers sharing one table can do this)
  // is refused as malformed: its completion would clear another slot's bit (AHCI: tag = slot).
  const fis = mem.read(table, 20);
  if (fis[0] === 0x27) {
    const command = decodeAtaCommand(decodeRegH2DFis(fis));
    if ((command.kind === "read" || command.kind === "write") && command.queued && command.tag !== slot)
      return { refused: true, counted: false };
  }
  return { refused: false, counted: false };
}

// ---- arbitraries ------------------------------------------------------------------------------------------

const vmmBase = GUEST_RAM;
/** Where a hostile guest points DMA: its RAM, the VMM's, across the boundary, beyond RAM, far away. */
const address = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0x20000, max: GUEST_RAM - 0x2000 }) },
  { weight: 3, arbitrary: fc.integer({ min: vmmBase, max: vmmBase + VMM_BYTES - 1 }) },
  { weight: 2, arbitrary: fc.integer({ min: GUEST_RAM - 0x3000, max: GUEST_RAM + 0x100 }) },
  { weight: 1, arbitrary: fc.integer({ min: TOTAL_RAM, max: 0xffffffff }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x1ffff }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 1, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }))
      .map(([high, low]) => high * 2 ** 32 + low),
  },
);

const dbc = fc.oneof(
  fc.integer({ min: 0, max: 0x1fff }),
  fc.integer({ min: 0, max: 0x3fffff }),
  fc.constantFrom(0, 0x1ff, 0x3fffff),
);

const prd: fc.Arbitrary<Prd> = fc
  .record({ address, count: dbc, interrupt: fc.boolean(), junk: fc.integer({ min: 0, max: 0x1ff }) })
  .map(({ address, count, interrupt, junk }) => ({
    address,
    dw3: ((interrupt ? 0x80000000 : 0) | (junk << 22) | count) >>> 0,
  }));

const OPCODES = [0x25, 0x35, 0x60, 0x61, 0xc8, 0xca, 0xec, 0xea, 0xe7, 0xef, 0x06, 0x20, 0x00, 0xff];

/**
 * A register H2D FIS, usually well formed, sometimes not (type, C bit, random bytes). A queued
 * command carries its slot as its tag (a mismatch is a case of its own, see the targeted tests).
 */
const fisOf = (benign: boolean, slot: number): fc.Arbitrary<{ bytes: Uint8Array; queued: boolean }> =>
  fc
    .record({
      kind: benign
        ? fc.constant("valid")
        : fc.constantFrom("valid", "valid", "valid", "wrong-type", "no-c-bit", "random"),
      opcode: benign
        ? fc.constantFrom(0x25, 0x35, 0x60, 0x61, 0xc8, 0xca, 0xec, 0xea, 0xe7)
        : fc.oneof(fc.constantFrom(...OPCODES), fc.integer({ min: 0, max: 255 })),
      lba: benign
        ? fc.integer({ min: 0, max: DISK_SECTORS - 16 })
        : fc.oneof(
            fc.integer({ min: 0, max: DISK_SECTORS - 1 }),
            fc.integer({ min: DISK_SECTORS - 8, max: DISK_SECTORS + 8 }),
            fc.integer({ min: 0, max: 2 ** 48 - 1 }),
          ),
      count: benign
        ? fc.integer({ min: 1, max: 16 })
        : fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 0xffff })),
      control: benign ? fc.constant(0) : fc.constantFrom(0, 0, 0x04),
      random: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    })
    .map((f) => {
      const bytes = new Uint8Array(64);
      if (f.kind === "random") {
        bytes.set(f.random);
        return { bytes, queued: f.random[2] === 0x60 || f.random[2] === 0x61 };
      }
      const queued = f.opcode === 0x60 || f.opcode === 0x61;
      bytes[0] = f.kind === "wrong-type" ? 0x34 : 0x27;
      bytes[1] = f.kind === "no-c-bit" ? 0 : 0x80;
      bytes[2] = f.opcode;
      const lba = f.lba;
      bytes[4] = lba & 0xff;
      bytes[5] = (lba >>> 8) & 0xff;
      bytes[6] = (lba >>> 16) & 0xff;
      bytes[7] = 0x40;
      const high = Math.floor(lba / 2 ** 24);
      bytes[8] = high & 0xff;
      bytes[9] = (high >>> 8) & 0xff;
      bytes[10] = (high >>> 16) & 0xff;
      if (queued) {
        bytes[3] = f.count & 0xff;
        bytes[11] = (f.count >>> 8) & 0xff;
        bytes[12] = slot << 3;
      } else {
        bytes[12] = f.count & 0xff;
        bytes[13] = (f.count >>> 8) & 0xff;
      }
      bytes[15] = f.control;
      return { bytes, queued };
    });

const guestAddress = fc.integer({ min: 0x20000, max: GUEST_RAM - 0x2000 });

/** A command for `slot`; a benign one keeps every pointer in guest RAM and PRDTL to its entries. */
const command = (slot: number, benign: boolean): fc.Arbitrary<FuzzCommand> =>
  fc
    .record({
      cfl: benign ? fc.constant(5) : fc.oneof(fc.constant(5), fc.integer({ min: 0, max: 31 })),
      write: fc.boolean(),
      flags: fc.integer({ min: 0, max: 0xf }),
      prdtl: benign
        ? fc.constant(-1)
        : fc.oneof(
            { weight: 4, arbitrary: fc.integer({ min: 0, max: 8 }) },
            { weight: 1, arbitrary: fc.integer({ min: 9, max: 0xffff }) },
            { weight: 1, arbitrary: fc.constantFrom(0, 0xffff) },
          ),
      prdbc: fc.integer({ min: 0, max: 0xffffffff }),
      table: benign
        ? fc.integer({ min: 0x400, max: (GUEST_RAM - 0x4000) / 128 }).map((n) => n * 128)
        : fc.oneof(
            {
              weight: 5,
              arbitrary: fc.integer({ min: 0x400, max: (GUEST_RAM - 0x4000) / 128 }).map((n) => n * 128),
            },
            { weight: 2, arbitrary: address.map((a) => a - (a % 128)) },
            { weight: 1, arbitrary: address },
          ),
      fis: fisOf(benign, slot),
      prds: fc.array(
        benign ? fc.record({ address: guestAddress, dw3: fc.integer({ min: 0x1ff, max: 0x2fff }) }) : prd,
        { minLength: 0, maxLength: 8 },
      ),
    })
    .map((c) => ({
      slot,
      dw0:
        (((c.prdtl < 0 ? c.prds.length : c.prdtl) << 16) |
          ((c.flags & 0x1) << 5) |
          ((c.flags >> 1) << 7) |
          (c.write ? 0x40 : 0) |
          c.cfl) >>>
        0,
      prdbc: c.prdbc,
      table: c.table,
      fis: c.fis.bytes,
      prds: c.prds,
      queued: c.fis.queued,
    }));

interface Round {
  readonly commands: readonly FuzzCommand[];
  /** Write the queued commands' bits to PxSACT first (as NCQ wants), or not. */
  readonly sact: "queued" | "none" | "all";
}

const round: fc.Arbitrary<Round> = fc
  .tuple(fc.uniqueArray(fc.integer({ min: 0, max: 31 }), { minLength: 1, maxLength: 4 }), fc.boolean())
  .chain(([slots, benign]) =>
    fc.record({
      commands: fc.tuple(...slots.map((s) => command(s, benign))),
      sact: fc.constantFrom("queued" as const, "none" as const, "all" as const),
    }),
  );

/** What the fuzzed rounds did, so a vacuous run (nothing refused, nothing completed) shows. */
interface Seen {
  rounds: number;
  /** Rounds after de-virtualization (the VMM is gone: nothing of it to check). */
  afterDevirtualization: number;
  refused: number;
  counted: number;
  completed: number;
  deviceErrors: number;
  hostBusErrors: number;
}
const newSeen = (): Seen => ({
  rounds: 0,
  afterDevirtualization: 0,
  refused: 0,
  counted: 0,
  completed: 0,
  deviceErrors: 0,
  hostBusErrors: 0,
});
const seenBy = { passthrough: newSeen(), streaming: newSeen() };

// ---- one fuzz round ---------------------------------------------------------------------------------------

/** Issues a round, waits for it to settle, checks the invariants; returns a description of what the guest saw. */
async function fuzzRound(rig: Rig, r: Round): Promise<void> {
  const mediator = rig.machine.mediator!;
  const seen = rig.streaming ? seenBy.streaming : seenBy.passthrough;
  await restartPort(rig);
  if (!rig.machine.host.on) {
    // De-virtualized: the guest owns the machine, only the "no exception, no hang" part applies.
    seen.afterDevirtualization++;
    for (const c of r.commands) writeCommand(rig, c);
    setReg(
      rig,
      P(PORT_CI),
      r.commands.reduce((m, c) => m | (1 << c.slot), 0),
    );
    await rig.clock.sleep(20);
    expect(rig.machine.host.stats.exitsAfterOff).toBe(0);
    return;
  }
  for (const c of r.commands) writeCommand(rig, c);
  const before = snapshot(rig);
  const issuedBefore = reg(rig, P(PORT_CI));
  const checks = r.commands.map((c) => ({ c, ...expectedCheck(rig, c.slot) }));
  const fresh = checks.filter(({ c }) => (issuedBefore & (1 << c.slot)) === 0);
  const refusedBefore = mediator.counters.refusedAddresses;
  let mask = 0;
  let sact = 0;
  for (const { c } of fresh) {
    mask |= 1 << c.slot;
    if (r.sact === "all" || (r.sact === "queued" && c.queued)) sact |= 1 << c.slot;
  }
  if (sact !== 0) setReg(rig, P(PORT_SACT), sact);
  setReg(rig, P(PORT_CI), mask);
  const counted = fresh.filter((f) => f.counted).length;
  if (!rig.machine.host.on) throw new Error("de-virtualized during the round's setup");
  expect(mediator.counters.refusedAddresses - refusedBefore, "pointer checks that failed").toBe(counted);
  const refused = fresh.filter((f) => f.refused);
  // Let it run: every command finishes or the port reports an error.
  const settled = () => {
    const ci = reg(rig, P(PORT_CI));
    const is = reg(rig, P(PORT_IS));
    return (is & IS_ERRORS) !== 0 || (ci & mask) === 0;
  };
  // 5 s of the machine's time: the whole image could have crossed the link twice by then.
  await waitFor(rig, settled, "the round's commands to finish or fail", 5000).catch(() => {
    throw new Error(
      `hang: PxCI 0x${reg(rig, P(PORT_CI)).toString(16)} (issued 0x${(mask >>> 0).toString(16)}), PxIS 0x${reg(rig, P(PORT_IS)).toString(16)}, PxTFD 0x${reg(rig, P(PORT_TFD)).toString(16)}`,
    );
  });
  await rig.clock.sleep(5);
  const is = reg(rig, P(PORT_IS));
  seen.rounds++;
  seen.refused += refused.length;
  seen.counted += counted;
  if ((reg(rig, P(PORT_CI)) & mask) === 0 && (is & IS_ERRORS) === 0) seen.completed++;
  if ((is & IS_TFES) !== 0) seen.deviceErrors++;
  if ((is & IS_HBFS) !== 0) seen.hostBusErrors++;
  if (refused.length > 0) {
    expect(is & IS_HBFS, "a refused command shows as a host bus fatal error").not.toBe(0);
    for (const f of refused)
      expect(reg(rig, P(PORT_CI)) & (1 << f.c.slot), `refused slot ${f.c.slot} stays issued`).not.toBe(0);
  } else {
    // Every pointer was the guest's: the device never reached outside RAM.
    expect(is & IS_HBFS, "no host bus error without a bad pointer").toBe(0);
  }
  const changed = firstChange(rig, before);
  if (changed) throw new Error(changed);
}

/** After a restart a plain READ DMA EXT works again and brings the disk's data. */
async function checkPortWorks(rig: Rig, lba: number): Promise<void> {
  await restartPort(rig);
  const mem = rig.machine.memory;
  mem.fill(CHECK_BUFFER, 4096, 0xee);
  const table = new Uint8Array(0x90);
  table.set([0x27, 0x80, 0x25, 0, lba & 0xff, (lba >>> 8) & 0xff, 0, 0x40, 0, 0, 0, 0, 8, 0, 0, 0], 0);
  const tv = new DataView(table.buffer);
  u32(tv, 0x80, CHECK_BUFFER);
  u32(tv, 0x8c, 4095);
  mem.write(CHECK_TABLE, table);
  const header = new Uint8Array(32);
  const hv = new DataView(header.buffer);
  u32(hv, 0, (1 << 16) | 5);
  u32(hv, 8, CHECK_TABLE);
  mem.write(CLB, header);
  setReg(rig, P(PORT_CI), 1);
  await waitFor(
    rig,
    () => (reg(rig, P(PORT_CI)) & 1) === 0 || (reg(rig, P(PORT_IS)) & IS_ERRORS) !== 0,
    "the check read",
  );
  expect(
    reg(rig, P(PORT_IS)) & IS_ERRORS,
    `PxIS after the check read (TFD 0x${reg(rig, P(PORT_TFD)).toString(16)})`,
  ).toBe(0);
  expect(reg(rig, P(PORT_CI)) & 1).toBe(0);
  const want = await rig.readDisk(lba, 8);
  expect(Buffer.compare(mem.read(CHECK_BUFFER, 4096), want)).toBe(0);
  // Acknowledged, as a driver does (a status bit left pending keeps the mediator from stepping aside).
  setReg(rig, P(PORT_IS), reg(rig, P(PORT_IS)));
  setReg(rig, HOST_BASE + HOST_IS, reg(rig, HOST_BASE + HOST_IS));
}

async function fuzzRun(makeRig: () => Rig, rounds: readonly Round[], checkLba: number): Promise<void> {
  const rig = makeRig();
  const vmmAtStart = snapshot(rig);
  await bringUp(rig);
  for (const r of rounds) await fuzzRound(rig, r);
  await checkPortWorks(rig, checkLba);
  if (rig.streaming) {
    // The deployment survives the hostile guest: it completes and steps aside.
    await withTimeout(rig.streaming.engine.finished(), 10_000, "engine.finished() after the fuzzed guest");
    expect(rig.machine.host.stats.exitsAfterOff).toBe(0);
  }
  const changed = firstChange(rig, vmmAtStart);
  if (changed) throw new Error(changed);
}

// ---- the tests ------------------------------------------------------------------------------------

describe("a hostile guest against the mediator (fuzz)", () => {
  it("passthrough: the VMM keeps running, its memory stays untouched, bad pointers are refused as HBFS, the port recovers", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(round, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 0, max: DISK_SECTORS - 8 }),
        async (rounds, lba) => {
          await withTimeout(
            fuzzRun(() => passthroughRig(), rounds, lba),
            20_000,
            "fuzz run",
          );
        },
      ),
      { numRuns: 120, seed: SEED, interruptAfterTimeLimit: 30_000, markInterruptAsFailure: false },
    );
    const seen = seenBy.passthrough;
    console.info(`passthrough fuzz rounds: ${JSON.stringify(seen)}`);
    expect(seen.counted, "pointers the mediator had to refuse").toBeGreaterThan(10);
    expect(seen.completed, "rounds whose commands all completed").toBeGreaterThan(10);
    expect(seen.deviceErrors, "rounds the device failed").toBeGreaterThan(10);
  }, 60_000);

  it("streaming: the same hostile guest cannot reach VMM memory, and the deployment still completes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(round, { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 0, max: DISK_SECTORS - 8 }),
        async (rounds, lba) => {
          await withTimeout(fuzzRun(streamingRig, rounds, lba), 20_000, "fuzz run");
        },
      ),
      // Each run streams a deployment: on a loaded machine 25 of them can take 30 s, and a run cut
      // short there may not have seen enough rounds for the counts below.
      { numRuns: 25, seed: SEED, interruptAfterTimeLimit: 45_000, markInterruptAsFailure: false },
    );
    const seen = seenBy.streaming;
    console.info(`streaming fuzz rounds: ${JSON.stringify(seen)}`);
    expect(seen.counted, "pointers the mediator had to refuse while streaming").toBeGreaterThan(5);
    expect(seen.completed, "rounds whose commands all completed while streaming").toBeGreaterThan(5);
  }, 60_000);
});

// ---- targeted: what the fuzzing and the differential runs turned up ----------------------------------

/** A valid READ DMA EXT of 8 sectors at `lba` into `buffer`, in slot `slot` (not issued). */
function validRead(
  rig: Rig,
  slot: number,
  lba: number,
  buffer: number,
  table = CHECK_TABLE + slot * 0x100,
): void {
  writeCommand(rig, {
    slot,
    dw0: (1 << 16) | 5,
    prdbc: 0,
    table,
    fis: Uint8Array.from([
      0x27,
      0x80,
      0x25,
      0,
      lba & 0xff,
      (lba >>> 8) & 0xff,
      0,
      0x40,
      0,
      0,
      0,
      0,
      8,
      0,
      0,
      0,
    ]),
    prds: [{ address: buffer, dw3: 4095 }],
    queued: false,
  });
}

/** Points slot's first descriptor somewhere else (the guest rewrites its PRDT). */
function retarget(rig: Rig, slot: number, address: number, table = CHECK_TABLE + slot * 0x100): void {
  const entry = new Uint8Array(8);
  const view = new DataView(entry.buffer);
  u32(view, 0, address % 2 ** 32);
  u32(view, 4, Math.floor(address / 2 ** 32));
  rig.machine.memory.write(table + 0x80, entry);
}

/**
 * The private areas of ports 1..31: the generated mediator's layout gives each port 4 KiB
 * (command list and received-FIS area) at the start of VMM memory, then the own runs' shared
 * tables and buffer, which port 0's own commands use.
 */
function unusedPortAreas(vmmBase: number): { base: number; length: number } {
  const portArea = 4096;
  return { base: vmmBase + portArea, length: 31 * portArea };
}

/** Guards only the private areas of ports 1..31. */
function guardUnusedPorts(rig: Rig): Rig {
  return { ...rig, guarded: [unusedPortAreas(ram(rig.machine).vmmRegion!.base)] };
}

describe("mediator: targeted cases", () => {
  it("the guest's PxCLB/PxFB must not let the device write into VMM memory", async () => {
    // The mediator checks every pointer of a command, but forwards PxFB as it is: with the
    // received-FIS area in VMM memory every completion's D2H/SDB FIS lands there.
    await fc.assert(
      fc.asyncProperty(address, async (fb) => {
        const rig = passthroughRig();
        const before = snapshot(rig);
        await bringUp(rig);
        setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~(ST | FRE));
        await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & (CR | FR)) === 0, "the engine to stop");
        setReg(rig, P(PORT_FBU), Math.floor(fb / 2 ** 32));
        setReg(rig, P(PORT_FB), fb % 2 ** 32);
        setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | FRE);
        setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | ST);
        validRead(rig, 0, 100, CHECK_BUFFER);
        setReg(rig, P(PORT_CI), 1);
        await rig.clock.sleep(10);
        const changed = firstChange(rig, before);
        if (changed) throw new Error(`PxFB 0x${fb.toString(16)}: ${changed}`);
      }),
      { numRuns: 40, seed: SEED },
    );
  });

  it("a command validated while the engine is stopped runs with the PRDT as it is when the guest starts the engine", async () => {
    // Time of check to time of use: PxCI is write-1-to-set whatever PxCMD.ST is. The mediator
    // checks the command when the guest writes PxCI, the device reads it again when ST is set.
    const rig = passthroughRig();
    const before = snapshot(rig);
    await bringUp(rig);
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
    await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CR) === 0, "PxCMD.CR to clear");
    validRead(rig, 0, 100, CHECK_BUFFER);
    const refused = rig.machine.mediator!.counters.refusedAddresses;
    setReg(rig, P(PORT_CI), 1); // checked now: every pointer is the guest's
    expect(rig.machine.mediator!.counters.refusedAddresses).toBe(refused);
    retarget(rig, 0, GUEST_RAM + 0x2000); // now into VMM memory
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | ST);
    await rig.clock.sleep(10);
    expect(firstChange(rig, before)).toBeNull();
  });

  it("a guest command held behind the mediator's own command runs with the PRDT it had when the guest issued it", async () => {
    // Held commands are checked at PxCI time and forwarded after the own command: the guest can
    // rewrite the descriptor meanwhile.
    const rig = guardUnusedPorts(passthroughRig(5));
    await bringUp(rig);
    const before = snapshot(rig);
    const mediator = rig.machine.mediator!;
    const own = mediator.issueOwn(0, { op: "flush", lba: 0, sectors: 0 }, true);
    validRead(rig, 0, 100, CHECK_BUFFER);
    setReg(rig, P(PORT_CI), 1);
    expect(mediator.counters.held).toBe(1);
    retarget(rig, 0, rig.guarded[0]!.base + 0x2000); // port 3's private area: never the mediator's
    expect((await own).ok).toBe(true);
    await rig.clock.sleep(20);
    expect(firstChange(rig, before)).toBeNull();
  });

  it("a guest clearing PxCMD.ST during the mediator's own command sees it clear, and the engine stays stopped", async () => {
    const rig = passthroughRig(20);
    await bringUp(rig);
    const own = rig.machine.mediator!.issueOwn(0, { op: "flush", lba: 0, sectors: 0 });
    await rig.clock.sleep(1); // the own command is on the device now
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
    // Bare metal: ST reads back clear at once, CR follows.
    expect(reg(rig, P(PORT_CMD)) & ST, "PxCMD.ST as the guest reads it back").toBe(0);
    await own;
    await rig.clock.sleep(5);
    expect(reg(rig, P(PORT_CMD)) & (ST | CR), "guest view after the own command").toBe(0);
    expect(
      rig.machine.controller.registers.get(P(PORT_CMD)) & ST,
      "the device's ST after the own command",
    ).toBe(0);
  });

  it("a guest stopping its engine during the mediator's own command drops its commands, as the device does", async () => {
    // Found by the streaming fuzz (de-virtualization never came: stale PxSACT bits). Clearing ST
    // clears PxCI and PxSACT (AHCI 3.3.7); while an own command runs, writeCommand only records the
    // engine bits and keeps the guest's issued, queued and held commands; a held one is released
    // to the device afterwards and runs when the guest starts its engine again.
    const rig = passthroughRig(20);
    await bringUp(rig);
    const mediator = rig.machine.mediator!;
    const own = mediator.issueOwn(0, { op: "flush", lba: 0, sectors: 0 });
    await rig.clock.sleep(1);
    rig.machine.memory.fill(CHECK_BUFFER, 4096, 0xee);
    validRead(rig, 3, 100, CHECK_BUFFER);
    setReg(rig, P(PORT_SACT), 1 << 3);
    setReg(rig, P(PORT_CI), 1 << 3);
    expect(mediator.counters.held, "held behind the own command").toBe(1);
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
    expect.soft(reg(rig, P(PORT_CI)), "PxCI after the guest cleared ST").toBe(0);
    expect.soft(reg(rig, P(PORT_SACT)), "PxSACT after the guest cleared ST").toBe(0);
    await own;
    await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CR) === 0, "PxCMD.CR to clear");
    const executed = rig.machine.controller.stats.commands;
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | ST);
    await rig.clock.sleep(20);
    expect
      .soft(rig.machine.controller.stats.commands, "commands the device ran after the restart")
      .toBe(executed);
    expect
      .soft(
        rig.machine.memory.read(CHECK_BUFFER, 4096).every((b) => b === 0xee),
        "the dropped read never wrote the guest's buffer",
      )
      .toBe(true);
    expect(mediator.quiescent(), "nothing left that keeps the mediator from stepping aside").toBe(true);
  });

  it("while the mediator's own command runs, PxCMD.CR and FR follow the guest's ST and FRE", async () => {
    // AHCI: CR is set only while ST is; FR follows FRE. The mediator substitutes ST/FRE but
    // shows the device's CR/FR, which belong to its own command.
    const rig = passthroughRig(20);
    await bringUp(rig);
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
    await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CR) === 0, "PxCMD.CR to clear");
    setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~FRE);
    await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & FR) === 0, "PxCMD.FR to clear");
    const own = rig.machine.mediator!.issueOwn(0, { op: "flush", lba: 0, sectors: 0 });
    await rig.clock.sleep(1);
    const seen = reg(rig, P(PORT_CMD));
    expect(
      (seen & (ST | CR | FRE | FR)) >>> 0,
      `PxCMD 0x${seen.toString(16)} with the guest's engine off`,
    ).toBe(0);
    await own;
  });

  it.each([
    { when: "while the mediator's own command runs", during: true },
    { when: "after the mediator's own command ran", during: false },
  ])(
    "a guest enabling FIS reception after an HBA reset $when gets the signature FIS and DHRS at once, as on bare metal",
    async ({ during }) => {
      // After an HBA reset the device's signature FIS waits for FRE. The mediator's own command
      // turns FRE on in its private area: the signature must still reach the guest when the guest
      // turns FRE on, with DHRS, at that moment, as without a mediator.
      const run = async (mediated: boolean) => {
        const rig = passthroughRig(20);
        const m = rig.machine;
        setReg(rig, HOST_BASE + HOST_GHC, GHC_AE);
        setReg(rig, HOST_BASE + HOST_GHC, GHC_AE | 1);
        await waitFor(rig, () => (reg(rig, HOST_BASE + HOST_GHC) & 1) === 0, "GHC.HR to clear");
        setReg(rig, HOST_BASE + HOST_GHC, GHC_AE);
        await waitFor(rig, () => (reg(rig, P(PORT_SSTS)) & 0xf) === 3, "the link");
        m.memory.fill(FB, 0x100, 0);
        setReg(rig, P(PORT_CLB), CLB);
        setReg(rig, P(PORT_FB), FB);
        const own = mediated ? m.mediator!.issueOwn(0, { op: "flush", lba: 0, sectors: 0 }) : null;
        await rig.clock.sleep(during ? 1 : 50);
        if (own && !during) expect((await own).ok).toBe(true);
        const beforeFre = {
          tfd: reg(rig, P(PORT_TFD)).toString(16),
          sig: reg(rig, P(PORT_SIG)).toString(16),
        };
        setReg(rig, P(PORT_IS), 0xffffffff);
        setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) | FRE);
        await rig.clock.sleep(0.1);
        const seen = {
          is: reg(rig, P(PORT_IS)).toString(16),
          tfd: reg(rig, P(PORT_TFD)).toString(16),
          sig: reg(rig, P(PORT_SIG)).toString(16),
          rfis: Buffer.from(m.memory.read(FB + 0x40, 20)).toString("hex"),
          beforeFre,
        };
        if (own && during) expect((await own).ok).toBe(true);
        return seen;
      };
      const bare = await run(false);
      expect(bare.is).toBe("1");
      expect(bare.beforeFre.sig, "no signature before FIS reception").toBe("ffffffff");
      expect(await run(true)).toEqual(bare);
    },
  );

  it("a guest reset at any moment of the mediator's own command leaves neither its lists nor a running engine behind", async () => {
    // runOwn does not look at `aborted` after stopEngine(): a COMRESET or HBA reset in that window
    // is followed by installLists(private) and ST|FRE, and the abort path restores nothing.
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 12 }),
        fc.constantFrom("comreset", "hba-reset"),
        async (k, how) => {
          const rig = passthroughRig();
          await bringUp(rig);
          // The guest's engine is off (as after ahci_port_stop), its lists in place.
          setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~ST);
          await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & CR) === 0, "PxCMD.CR to clear");
          setReg(rig, P(PORT_CMD), reg(rig, P(PORT_CMD)) & ~FRE);
          await waitFor(rig, () => (reg(rig, P(PORT_CMD)) & FR) === 0, "PxCMD.FR to clear");
          const own = rig.machine.mediator!.issueOwn(0, { op: "flush", lba: 0, sectors: 0 });
          for (let i = 0; i < k; i++) await Promise.resolve();
          if (how === "comreset") {
            setReg(rig, P(0x2c), 0x301);
            setReg(rig, P(0x2c), 0x300);
          } else {
            setReg(rig, HOST_BASE + HOST_GHC, GHC_AE | 1);
          }
          await own;
          await rig.clock.sleep(5);
          const device = rig.machine.controller.registers;
          const vmm = ram(rig.machine).vmmRegion!;
          const clb = device.get(P(PORT_CLB));
          const fb = device.get(P(PORT_FB));
          const where = `${how} after ${k} microtasks: device PxCLB 0x${clb.toString(16)}, PxFB 0x${fb.toString(16)}, PxCMD 0x${device.get(P(PORT_CMD)).toString(16)}`;
          expect(clb >= vmm.base && clb < vmm.base + vmm.length, where).toBe(false);
          expect(fb >= vmm.base && fb < vmm.base + vmm.length, where).toBe(false);
          expect(device.get(P(PORT_CMD)) & (ST | FRE), where).toBe(0);
          expect(reg(rig, P(PORT_CMD)) & (ST | CR | FRE | FR), where).toBe(0);
        },
      ),
      { numRuns: 40, seed: SEED },
    );
  });

  it("an own command queued while a guest command fails runs once the guest has recovered and gone idle", async () => {
    // Found by the random workloads (engine.finished() never resolving): the guest's engine stop
    // drops its commands (dropCommands) but nothing starts the pending own command afterwards;
    // it waits for a guest completion that never comes when the guest stays idle.
    const rig = passthroughRig(5);
    await bringUp(rig);
    const mediator = rig.machine.mediator!;
    // A read past the end of the disk: on the device for 5 ms, then TFES.
    writeCommand(rig, {
      slot: 0,
      dw0: (1 << 16) | 5,
      prdbc: 0,
      table: CHECK_TABLE,
      fis: Uint8Array.from([0x27, 0x80, 0x25, 0, 0xff, 0x0f, 0, 0x40, 0, 0, 0, 0, 2, 0, 0, 0]),
      prds: [{ address: CHECK_BUFFER, dw3: 1023 }],
      queued: false,
    });
    setReg(rig, P(PORT_CI), 1);
    const own = mediator.issueOwn(0, { op: "flush", lba: 0, sectors: 0 }); // background: waits for the guest
    await waitFor(rig, () => (reg(rig, P(PORT_IS)) & IS_TFES) !== 0, "the error");
    await restartPort(rig); // libahci's recovery; then the guest is idle
    const outcome = await Promise.race([
      own.then((r) => (r.ok ? "done" : `failed: ${r.error}`)),
      rig.clock.sleep(500).then(() => "still pending after 500 ms of an idle guest"),
    ]);
    expect(outcome).toBe("done");
  });

  it("streaming: a command with a short CFL is not handed to the device behind the engine's back", async () => {
    // The mediator treats CFL < 5 dwords as malformed ("other") and passes it; the device ignores
    // CFL and executes the FIS: a read comes from the empty local disk, a write is later
    // overwritten by the background copy.
    const clock = new VirtualClock();
    const s = streamingSetup({
      sectors: DISK_SECTORS,
      clock,
      blockBytes: 64 * 1024,
      ramMiB: 4,
      linkBytesPerSecond: 1024 * 1024, // 2 MiB at 1 MiB/s: the end of the disk comes late
    });
    s.engine.start();
    const rig: Rig = {
      machine: s.machine,
      clock,
      guarded: [],
      streaming: s,
      readDisk: (lba, count) => s.engine.readAsGuest(lba, count, (l, c) => s.local.read(l, c)),
    };
    await bringUp(rig);
    const lba = DISK_SECTORS - 64;
    // WRITE DMA EXT of 8 sectors of 0xab, CFL 4.
    rig.machine.memory.fill(CHECK_BUFFER, 4096, 0xab);
    writeCommand(rig, {
      slot: 1,
      dw0: ((1 << 16) | 0x40 | 4) >>> 0,
      prdbc: 0,
      table: CHECK_TABLE + 0x100,
      fis: Uint8Array.from([
        0x27,
        0x80,
        0x35,
        0,
        lba & 0xff,
        (lba >>> 8) & 0xff,
        0,
        0x40,
        0,
        0,
        0,
        0,
        8,
        0,
        0,
        0,
      ]),
      prds: [{ address: CHECK_BUFFER, dw3: 4095 }],
      queued: false,
    });
    setReg(rig, P(PORT_CI), 2);
    await waitFor(
      rig,
      () => (reg(rig, P(PORT_CI)) & 2) === 0 || (reg(rig, P(PORT_IS)) & IS_ERRORS) !== 0,
      "the write",
    );
    const wrote = (reg(rig, P(PORT_IS)) & IS_ERRORS) === 0;
    setReg(rig, P(PORT_IS), 0xffffffff);
    setReg(rig, HOST_BASE + HOST_IS, 0xffffffff);
    // READ DMA EXT of 8 sectors further on, CFL 4.
    const readLba = DISK_SECTORS - 32;
    writeCommand(rig, {
      slot: 2,
      dw0: (1 << 16) | 4,
      prdbc: 0,
      table: CHECK_TABLE + 0x200,
      fis: Uint8Array.from([
        0x27,
        0x80,
        0x25,
        0,
        readLba & 0xff,
        (readLba >>> 8) & 0xff,
        0,
        0x40,
        0,
        0,
        0,
        0,
        8,
        0,
        0,
        0,
      ]),
      prds: [{ address: CHECK_BUFFER + 0x1000, dw3: 4095 }],
      queued: false,
    });
    setReg(rig, P(PORT_CI), 4);
    await waitFor(
      rig,
      () => (reg(rig, P(PORT_CI)) & 4) === 0 || (reg(rig, P(PORT_IS)) & IS_ERRORS) !== 0,
      "the read",
    );
    const read = (reg(rig, P(PORT_IS)) & IS_ERRORS) === 0;
    setReg(rig, P(PORT_IS), 0xffffffff);
    setReg(rig, HOST_BASE + HOST_IS, 0xffffffff);
    const expected = new Uint8Array(4096);
    fillLbaPattern(expected, readLba);
    if (read) {
      expect(
        Buffer.compare(rig.machine.memory.read(CHECK_BUFFER + 0x1000, 4096), expected),
        "a completed read returns the image's data",
      ).toBe(0);
    }
    await withTimeout(s.engine.finished(), 10_000, "engine.finished()");
    if (wrote) {
      const disk = await s.local.read(lba, 8);
      expect(
        disk.every((b) => b === 0xab),
        "a completed write survives the background copy",
      ).toBe(true);
    }
  });
});
