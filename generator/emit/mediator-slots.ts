import type {
  DeviceModel,
  FieldPath,
  LinkModel,
  MediatorModel,
  RegisterFieldRef,
  RegisterRef,
  StructModel,
} from "../model.ts";
import {
  constName,
  finish,
  type GeneratedFile,
  memberName,
  newProject,
  newSourceFile,
  typeName,
} from "./common.ts";

/** Raised when a spec's mediator section cannot drive the protocol family; the compiler reports it. */
export class MediatorSpecError extends Error {}

/**
 * mediator.ts for the "slots" protocol family (a command list with an issue bitmap, as AHCI):
 * the trap handlers of the spec's mediation points and the paper's three hooks.
 *   interpret - every guest command is decoded and shown to a policy before the device sees it;
 *   redirect  - the policy may complete a command itself; the mediator emulates the device's
 *               completion (FIS, status registers, interrupt);
 *   multiplex - the policy may run its own commands on an idle port, with a private command list
 *               and received-FIS area, invisible to the guest, whose commands are held meanwhile.
 * The code is the same for every device of the family; every offset, mask, structure and opcode
 * comes from the spec through the names resolved below.
 */
export function emitSlotsMediator(model: DeviceModel, path: string): GeneratedFile {
  const m = model.mediator;
  if (!m) throw new MediatorSpecError("the spec has no mediator section");
  const n = resolveNames(model, m);
  const file = newSourceFile(newProject(), path);
  file.addStatements(source(n));
  return finish(file, model.source, path);
}

interface Names {
  readonly device: string;
  readonly registerImports: string[];
  readonly structImports: string[];
  readonly commandImports: string[];
  readonly P: string;
  readonly H: string;
  readonly ci: string;
  readonly sact: string;
  readonly is: string;
  readonly ie: string;
  readonly tfd: string;
  readonly tfdStatus: string;
  readonly tfdErrorShift: string;
  readonly cmd: string;
  readonly st: string;
  readonly cr: string;
  readonly fre: string;
  readonly fr: string;
  readonly clb: string;
  readonly clbu: string;
  readonly fb: string;
  readonly fbu: string;
  readonly clbMask: string;
  readonly fbMask: string;
  readonly hostIs: string;
  readonly ghc: string;
  readonly ghcIe: string;
  readonly ghcHr: string;
  /** Port registers whose write resets the port when the named field is non-zero (COMRESET). */
  readonly portResets: readonly { readonly register: string; readonly mask: string }[];
  readonly errorBit: string;
  readonly hostBusFatal: string;
  readonly overflow: string;
  readonly completeBit: string;
  readonly completeQueuedBit: string;
  readonly header: string;
  readonly table: string;
  readonly prd: string;
  readonly fisStruct: string;
  readonly d2h: string;
  readonly sdb: string;
  readonly listSlotOffset: string;
  readonly headerSize: string;
  readonly tableCommandOffset: string;
  readonly tableFixedSize: string;
  readonly prdSize: string;
  readonly prdtOffset: string;
  readonly d2hOffset: string;
  readonly d2hSize: string;
  readonly portSize: string;
  readonly sdbOffset: string;
  readonly fisAreaSize: string;
  readonly listSize: string;
  readonly fisAlign: number;
  readonly listAlign: number;
  readonly tableAlign: number;
  readonly dataAlign: number;
  readonly setName: string;
  readonly decodeCommand: string;
  readonly encodeCommand: string;
  readonly commandType: string;
  readonly ownRead: string;
  /** A queued read, used to make the device raise the queued-completion status bit itself. */
  readonly ownQueuedRead: string;
  readonly ownWrite: string;
  /** A queued write: several own writes run side by side in one batch. */
  readonly ownQueuedWrite: string;
  readonly ownFlush: string;
  readonly ownMaxSectors: number;
  readonly headerFields: {
    readonly prdtl: { member: string; mask: string; shift: string };
    readonly write: { member: string; mask: string };
    readonly cfl: { member: string; mask: string; shift: string };
    readonly transferred: string;
    readonly ctba: string;
    readonly ctbau: string | null;
  };
  readonly prdFields: {
    readonly dba: string;
    readonly dbau: string | null;
    readonly length: { member: string; mask: string; shift: string; add: number };
  };
  readonly fisConstantCheck: string;
  readonly interruptField: { member: string; mask: string };
  readonly sdbInterruptField: { member: string; mask: string };
  readonly sdbStatusMask: string;
}

function fail(message: string): never {
  throw new MediatorSpecError(message);
}

function resolveNames(model: DeviceModel, m: MediatorModel): Names {
  const structs = new Map(model.structs.map((s) => [s.name, s]));
  const struct = (name: string): StructModel => structs.get(name) ?? fail(`unknown structure ${name}`);
  const regConst = (r: RegisterRef) => `${constName(r.block)}_${constName(r.register)}`;
  const fieldConst = (r: RegisterFieldRef) => `${regConst(r)}_${constName(r.field)}`;
  const registerImports = new Set<string>();
  const structImports = new Set<string>();
  const R = (name: string) => {
    registerImports.add(name);
    return name;
  };
  const S = (name: string) => {
    structImports.add(name);
    return name;
  };
  const structField = (p: FieldPath, needShift: boolean) => {
    const s = struct(p.struct);
    const member = s.members.find((x) => x.name === p.member);
    if (member?.kind !== "scalar") fail(`${p.struct}.${p.member} must be a scalar member`);
    if (p.field === null) return { member: p.member, mask: "0xffffffff", shift: "0" };
    const f =
      member.fields.find((x) => x.name === p.field) ??
      fail(`unknown field ${p.struct}.${p.member}.${p.field}`);
    const base = `${constName(p.struct)}_${constName(p.member)}_${constName(p.field)}`;
    return { member: p.member, mask: S(base), shift: needShift && f.width > 1 ? S(`${base}_SHIFT`) : "0" };
  };

  const P = constName(m.slots.block);
  const H = constName(m.interrupt.summary.block);
  const header = m.direction.struct;
  const linkTo = (target: string): LinkModel =>
    model.links.find((l) => l.target.kind === "struct" && l.target.struct === target) ??
    fail(`no link points at ${target}`);
  const list =
    model.structs.find((s) =>
      s.members.some((x) => x.kind === "struct" && x.struct === header && x.count > 1),
    ) ?? fail(`no structure holds an array of ${header}`);
  const listMember = list.members.find((x) => x.kind === "struct" && x.struct === header)!;
  const listLink = linkTo(list.name);
  const queuedCompletion = m.completions.find((c) => c.queued) ?? fail("a queued completion is required");
  const plainCompletion = m.completions.find((c) => !c.queued) ?? fail("a non-queued completion is required");
  const fisArea = plainCompletion.at.struct;
  const fisLink = linkTo(fisArea);
  const tableLink =
    model.links.find(
      (l) => l.from.kind === "struct" && l.from.struct === header && l.target.kind === "struct",
    ) ?? fail(`no link from ${header} to a command table`);
  if (tableLink.target.kind !== "struct" || tableLink.from.kind !== "struct") fail("bad table link");
  const table = struct(tableLink.target.struct);
  const tail = table.members.find((x) => x.kind === "tail") ?? fail(`${table.name} has no descriptor table`);
  if (tail.kind !== "tail") fail("unreachable");
  const prd = struct(tail.struct);
  const dataLink =
    model.links.find(
      (l) => l.from.kind === "struct" && l.from.struct === prd.name && l.target.kind === "data",
    ) ?? fail(`no data link from ${prd.name}`);
  if (dataLink.target.kind !== "data" || dataLink.from.kind !== "struct") fail("bad data link");
  if (listLink.from.kind !== "register" || fisLink.from.kind !== "register")
    fail("list links must start at registers");

  const set =
    model.commandSets.find((c) => c.name === m.commands.set) ?? fail(`unknown command set ${m.commands.set}`);
  const pick = (kind: "read" | "write" | "flush") => {
    const candidates = set.commands.filter(
      (c) => c.kind === kind && !c.queued && (kind === "flush" || c.transfer === "dma"),
    );
    const best = [...candidates].sort(
      (a, b) => (b.count?.zeroMeans ?? 0) - (a.count?.zeroMeans ?? 0) || a.opcode - b.opcode,
    )[0];
    return (
      best ??
      fail(
        `the command set has no non-queued ${kind === "flush" ? "" : "DMA "}${kind} command for the mediator's own use`,
      )
    );
  };
  const ownRead = pick("read");
  const ownQueuedRead =
    set.commands.find((c) => c.kind === "read" && c.queued && c.transfer === "dma") ??
    fail("the command set has no queued DMA read for the mediator's own use");
  const ownWrite = pick("write");
  const ownQueuedWrite =
    set.commands.find((c) => c.kind === "write" && c.queued && c.transfer === "dma") ??
    fail("the command set has no queued DMA write for the mediator's own use");
  const ownFlush = pick("flush");

  const fisStruct = struct(set.struct);
  const typeMember = fisStruct.members.find((x) => x.kind === "scalar" && x.constant !== null);
  const fisConstantCheck = typeMember
    ? `bytes[${S(`${constName(fisStruct.name)}_${constName(typeMember.name)}`)}] === ${S(`${constName(fisStruct.name)}_${constName(typeMember.name)}_VALUE`)}`
    : "true";

  const d2h = struct(plainCompletion.fis);
  const sdb = struct(queuedCompletion.fis);
  const requireMember = (s: StructModel, name: string) =>
    s.members.find((x) => x.name === name) ?? fail(`completion FIS ${s.name} needs a member ${name}`);
  for (const s of [d2h, sdb]) {
    requireMember(s, "STATUS");
    requireMember(s, "ERROR");
  }
  requireMember(sdb, "ACTIVE");
  const flagI = (s: StructModel) => {
    const flags = requireMember(s, "FLAGS");
    if (flags.kind !== "scalar" || !flags.fields.some((f) => f.name === "I"))
      fail(`${s.name}.FLAGS needs a field I`);
    return { member: "FLAGS", mask: S(`${constName(s.name)}_FLAGS_I`) };
  };
  const sdbStatus = requireMember(sdb, "STATUS");
  const sdbStatusMask =
    sdbStatus.kind === "scalar" && sdbStatus.fields.length > 0
      ? `0x${sdbStatus.fields.reduce((acc, f) => (acc | f.mask) >>> 0, 0).toString(16)}`
      : "0xff";

  const lengthField = structField(dataLink.target.lengthFrom, true);
  const prdtl = structField(
    { struct: header, member: tail.countFrom.member, field: tail.countFrom.field },
    true,
  );
  const names: Names = {
    device: typeName(model.name),
    registerImports: [],
    structImports: [],
    commandImports: [
      `decode${typeName(set.name)}Command`,
      `encode${typeName(set.name)}Command`,
      `type ${typeName(set.name)}Command`,
    ],
    P,
    H,
    ci: R(regConst(m.slots)),
    sact: R(m.queue ? regConst(m.queue) : fail("the slots family needs a queue register")),
    is: R(regConst(m.interrupt.status)),
    ie: R(regConst(m.interrupt.enable)),
    tfd: R(regConst(m.status.status)),
    tfdStatus: fieldConst(m.status.status),
    tfdErrorShift: R(`${fieldConst(m.status.error)}_SHIFT`),
    cmd: R(regConst(m.start.control)),
    st: R(fieldConst(m.start.control)),
    cr: R(fieldConst(m.start.running)),
    fre: R(fieldConst(m.receive.control)),
    fr: R(fieldConst(m.receive.running)),
    clb: R(`${P}_${constName(listLink.from.low)}`),
    clbu: R(`${P}_${constName(listLink.from.high ?? fail("64-bit list pointers need a high half"))}`),
    fb: R(`${P}_${constName(fisLink.from.low)}`),
    fbu: R(`${P}_${constName(fisLink.from.high ?? fail("64-bit FIS pointers need a high half"))}`),
    clbMask: `0x${listLink.lowMask.toString(16)}`,
    fbMask: `0x${fisLink.lowMask.toString(16)}`,
    hostIs: R(regConst(m.interrupt.summary)),
    ghc: R(regConst(m.interrupt.gate)),
    ghcIe: R(fieldConst(m.interrupt.gate)),
    ghcHr: R(
      (() => {
        const t =
          m.traps.find((x) => x.role === "reset" && x.block === m.interrupt.summary.block) ??
          fail("the slots family needs a reset trap on a host register (host.GHC.HR)");
        if (!t.field) fail("the reset trap must name its field (host.GHC.HR)");
        return `${constName(t.block)}_${constName(t.register)}_${constName(t.field)}`;
      })(),
    ),
    portResets: m.traps
      .filter((t) => t.role === "reset" && t.block === m.slots.block && t.access === "write")
      .map((t) => {
        if (!t.field) fail(`the reset trap on ${t.block}.${t.register} must name its field`);
        return {
          register: R(`${P}_${constName(t.register)}`),
          mask: R(`${P}_${constName(t.register)}_${constName(t.field)}`),
        };
      }),
    errorBit: R(fieldConst(m.error)),
    hostBusFatal: R(`${P}_${constName(m.interrupt.status.register)}_HBFS`),
    overflow: R(`${P}_${constName(m.interrupt.status.register)}_OFS`),
    completeBit: R(fieldConst(plainCompletion.raise)),
    completeQueuedBit: R(fieldConst(queuedCompletion.raise)),
    header,
    table: table.name,
    prd: prd.name,
    fisStruct: fisStruct.name,
    d2h: d2h.name,
    sdb: sdb.name,
    listSlotOffset: S(`${constName(list.name)}_${constName(listMember.name)}`),
    headerSize: S(`${constName(header)}_SIZE`),
    tableCommandOffset: S(`${constName(table.name)}_${constName(m.commands.member)}`),
    tableFixedSize: S(`${constName(table.name)}_SIZE`),
    prdSize: S(`${constName(prd.name)}_SIZE`),
    prdtOffset: S(`${constName(table.name)}_${constName(tail.name)}`),
    d2hOffset: S(`${constName(fisArea)}_${constName(plainCompletion.at.member)}`),
    d2hSize: S(`${constName(d2h.name)}_SIZE`),
    portSize: R(`${P}_SIZE`),
    sdbOffset: S(`${constName(fisArea)}_${constName(queuedCompletion.at.member)}`),
    fisAreaSize: S(`${constName(fisArea)}_SIZE`),
    listSize: S(`${constName(list.name)}_SIZE`),
    fisAlign: fisLink.align,
    listAlign: listLink.align,
    tableAlign: tableLink.align,
    dataAlign: dataLink.align,
    setName: typeName(set.name),
    decodeCommand: `decode${typeName(set.name)}Command`,
    encodeCommand: `encode${typeName(set.name)}Command`,
    commandType: `${typeName(set.name)}Command`,
    ownRead: ownRead.name,
    ownQueuedRead: ownQueuedRead.name,
    ownWrite: ownWrite.name,
    ownQueuedWrite: ownQueuedWrite.name,
    ownFlush: ownFlush.name,
    ownMaxSectors: ownWrite.count?.zeroMeans ?? 256,
    headerFields: {
      prdtl,
      write: (() => {
        const f = structField(m.direction, false);
        return { member: f.member, mask: f.mask };
      })(),
      cfl: structField(m.fisLength, true),
      transferred: m.transferred.member,
      ctba: tableLink.from.low,
      ctbau: tableLink.from.high,
    },
    prdFields: {
      dba: dataLink.from.low,
      dbau: dataLink.from.high,
      length: { ...lengthField, add: dataLink.target.lengthAdd },
    },
    fisConstantCheck,
    interruptField: flagI(d2h),
    sdbInterruptField: flagI(sdb),
    sdbStatusMask,
  };
  for (const s of [header, prd.name, fisStruct.name]) S(`decode${s}`);
  for (const s of [header, prd.name, d2h.name, sdb.name]) S(`encode${s}`);
  S(`empty${d2h.name}`);
  S(`empty${sdb.name}`);
  S(`empty${header}`);
  S(`empty${prd.name}`);
  S(`encode${fisStruct.name}`);
  R("DEVICE");
  R(`${P}_BASE`);
  R(`${P}_STRIDE`);
  R(`${P}_COUNT`);
  R(`${H}_BASE`);
  void memberName;
  return { ...names, registerImports: [...registerImports].sort(), structImports: [...structImports].sort() };
}

function source(n: Names): string {
  const hf = n.headerFields;
  const pf = n.prdFields;
  const field = (v: string, f: { mask: string; shift: string }) =>
    f.shift === "0" ? `((${v} & ${f.mask}) >>> 0)` : `((${v} & ${f.mask}) >>> ${f.shift})`;
  return `
import {
  ${n.registerImports.join(",\n  ")},
} from "./registers.ts";
import {
  ${n.structImports.join(",\n  ")},
} from "./structs.ts";
import { ${n.commandImports.join(", ")} } from "./commands.ts";

/** What the mediator needs from the VMM it runs in (EPT-trapped MMIO, DMA, the guest's interrupt line). */
export interface MediatorHost {
  /** Physical memory: guest RAM and the VMM's own. */
  readonly memory: {
    read(address: number, length: number): Uint8Array;
    /** The bytes in place, no copy (optional): for parsing what must be checked in one step. */
    liveView?(address: number, length: number): Uint8Array;
    write(address: number, data: Uint8Array): void;
    /** The physical address of a view of this memory's own bytes (optional; undefined for any other array). */
    addressOf?(view: Uint8Array): number | undefined;
  };
  /** True when [address, address + length) lies in RAM the guest owns (not the VMM's). */
  isGuestRange(address: number, length: number): boolean;
  /** VMM-private physical memory for the mediator's own command lists, tables and buffers. */
  readonly privateMemory: { readonly base: number; readonly size: number };
  /**
   * VMM memory beside privateMemory where callers may already hold the data of their own writes
   * (optional; e.g. buffers the image was fetched into): such data goes to the device from where
   * it lies instead of through a copy. It must stay unchanged until its write completes.
   */
  readonly dmaMemory?: { readonly base: number; readonly size: number };
  /** The device's registers, straight (dword offsets in the register window). */
  deviceRead(offset: number): number;
  deviceWrite(offset: number, value: number): void;
  /** Drives the interrupt line as the guest sees it. */
  setGuestInterrupt(level: boolean): void;
  /** Resolves after \`ms\` of the machine's time (0: after pending I/O callbacks). */
  sleep(ms: number): Promise<void>;
}

/** A guest command as the policy sees it: device-neutral fields, the decoded command, data access. */
export interface GuestRequest {
  readonly port: number;
  readonly slot: number;
  readonly op: "read" | "write" | "flush" | "other";
  readonly lba: number;
  readonly sectors: number;
  readonly queued: boolean;
  readonly command: ${n.commandType};
  /** Bytes the guest's descriptor table covers. */
  readonly bufferBytes: number;
  /** Gathers the data a write command carries from the guest's buffers. */
  readData(): Uint8Array;
  /** Scatters a read command's data into the guest's buffers; false when they are too small. */
  writeData(data: Uint8Array): boolean;
}

/** Why an emulated completion failed, in the device's terms. */
export type CompletionError = "media" | "aborted";

/**
 * The policy's answer to a guest command.
 *  pass:     the device executes it (held while a mediator command runs);
 *  complete: the policy completes it (redirect) — \`result\` resolves when the data is in the guest's
 *            buffers, or rejects (with a CompletionError as \`cause\` or message) to fail it as a disk would;
 *  defer:    decide later, e.g. after a background copy of the same blocks has landed.
 */
export type Decision =
  | { readonly action: "pass" }
  | { readonly action: "complete"; readonly result: Promise<void> }
  | { readonly action: "defer"; readonly until: Promise<Decision> };

export interface MediatorPolicy {
  /** interpret: every decoded guest command, before the device sees it. */
  interpret(request: GuestRequest): Decision;
  /** A command the device executed has finished. */
  completed?(request: GuestRequest, ok: boolean): void;
  /** The port has no guest command anywhere: a moment to multiplex. */
  idle?(port: number): void;
}

/** A command of the mediator's own (multiplex), in sectors. */
export interface OwnCommand {
  readonly op: "read" | "write" | "flush";
  readonly lba: number;
  readonly sectors: number;
  /** For writes: the data, sectors * sector size bytes. */
  readonly data?: Uint8Array;
}

export interface OwnResult {
  readonly ok: boolean;
  /** For reads: the data. */
  readonly data?: Uint8Array;
  /** Why it failed: the device's task-file status, or "aborted" when the guest reset or stopped the port. */
  readonly error?: string;
}

export interface MediatorCounters {
  guestCommands: number;
  passed: number;
  redirected: number;
  deferred: number;
  held: number;
  ownCommands: number;
  ownBytes: number;
  refusedAddresses: number;
  malformed: number;
  exits: number;
}

const SECTOR = DEVICE.sectorSize;
/** The largest own command: the command's count limit, and what one private buffer holds. */
export const OWN_MAX_SECTORS = ${n.ownMaxSectors};
const DWORD = 4;
/** Bytes one descriptor of the mediator's own commands covers. */
const PRD_BYTES = 4 * 1024 * 1024;
/**
 * Own writes one run may carry: queued in slots 0.., so the device works on them side by side
 * (one write at a time leaves the disk idle between them).
 */
const OWN_BATCH = 8;
/** A port's private command list and received-FIS area (used while its own run is on, or when its lists are refused). */
const PORT_AREA = (${n.listSize} + ${Math.max(n.fisAlign, 256)} + 4095) & ~4095;
/** One own command table with room for the largest transfer, ${n.tableAlign}-byte aligned. */
const TABLE_STRIDE = (${n.tableFixedSize} + ${n.prdSize} * Math.ceil((OWN_MAX_SECTORS * SECTOR) / PRD_BYTES) + ${n.tableAlign - 1}) & ~${n.tableAlign - 1};
/** Private memory layout: the ports' areas, then the own run's tables, then its data buffer. */
const OWN_TABLES = ${n.P}_COUNT * PORT_AREA;
const OWN_BUFFER = (OWN_TABLES + OWN_BATCH * TABLE_STRIDE + 4095) & ~4095;
/** The smallest private memory that fits the layout with a useful buffer. */
const MIN_OWN_BUFFER = 64 * 1024;

interface OwnRun {
  /**
   * The commands of the run: one, or writes of disjoint ranges run as queued commands (more join
   * while it runs, see executeOwn).
   */
  readonly batch: PendingOwn[];
  /** The commands that have their result. */
  readonly settled: Set<PendingOwn>;
  readonly keep: number;
  /** Device PxIS bits already set when it started: the rest are its own and get cleared. */
  isBefore: number;
  hostIsBefore: number;
  /** The guest's engine bits while the mediator's lists are in place. */
  guestCmd: number;
  aborted: boolean;
}

interface PendingOwn {
  readonly command: OwnCommand;
  readonly urgent: boolean;
  readonly resolve: (result: OwnResult) => void;
  /** Status bits the command raises that stay for the guest (see reconcile). */
  readonly keep?: number;
}

/** The guest-visible state of one port, kept while the mediator is on. */
class PortShadow {
  /** Slots the guest sees as issued (its view of the issue register). */
  issued = 0;
  /** Tags the guest sees as outstanding (its view of the queue register). */
  queued = 0;
  /** Guest slots executing on the device, and which of them are queued. */
  onDevice = 0;
  queuedOnDevice = 0;
  /** Guest slots waiting: held behind a mediator command, or deferred by the policy. */
  held: number[] = [];
  deferred = 0;
  /** Guest slots the policy completes itself. */
  emulated = 0;
  /** Interrupt status bits raised by emulated completions (not on the device). */
  emulatedIs = 0;
  /** Task-file value the guest must see instead of the device's, after an emulated completion. */
  taskFile: number | null = null;
  /**
   * A register FIS the device posted when the mediator's command turned FIS reception on (the
   * signature it holds back after a reset until reception is on): the guest's, delivered when the
   * guest turns its own reception on, with the task file it set.
   */
  owedFis: Uint8Array | null = null;
  owedTaskFile = 0;
  /** Port registers that FIS changed (its signature register...), as the guest saw them before. */
  owedRegisters: Map<number, number> | null = null;
  /** An emulated error stopped command processing until the guest restarts the engine. */
  stopped = false;
  /** Bumped on reset or engine stop: late answers for dropped commands are ignored. */
  epoch = 0;
  readonly requests: (GuestRequest | undefined)[] = [];
  /** The list pointers as the guest wrote them (CLB, CLBU, FB, FBU). */
  readonly listRegs: [number, number, number, number] = [0, 0, 0, 0];
  /** The guest's pointers leave its memory: the device got a harmless private address instead. */
  listsRefused = false;
  /** The guest's list pointers while the mediator's own lists are installed. */
  guestLists: [number, number, number, number] | null = null;
  own: OwnRun | null = null;
  readonly pending: PendingOwn[] = [];
}

/**
 * The generated ${n.device} mediator. The VMM calls \`read\` and \`write\` for every trapped access
 * to the register window and \`deviceInterrupt\` when the device's interrupt line changes.
 */
export class ${n.device}Mediator {
  readonly counters: MediatorCounters = {
    guestCommands: 0,
    passed: 0,
    redirected: 0,
    deferred: 0,
    held: 0,
    ownCommands: 0,
    ownBytes: 0,
    refusedAddresses: 0,
    malformed: 0,
    exits: 0,
  };
  private readonly ports: PortShadow[] = Array.from({ length: ${n.P}_COUNT }, () => new PortShadow());
  /** Whoever waits for the device's next status; and whether the VMM reports them at all. */
  private readonly statusWaiters: (() => void)[] = [];
  private statusReported = false;
  /** Summary bits raised by emulated completions. */
  private emulatedHostIs = 0;
  private policy: MediatorPolicy = { interpret: () => ({ action: "pass" }) };
  private devirtualized = false;
  /** An own run holds the shared tables and buffer: runs take turns across ports. */
  private ownRunning = false;

  constructor(private readonly host: MediatorHost) {
    const needed = OWN_BUFFER + MIN_OWN_BUFFER;
    if (host.privateMemory.size < needed) {
      throw new RangeError(\`the mediator needs \${needed} bytes of private memory, got \${host.privateMemory.size}\`);
    }
  }

  setPolicy(policy: MediatorPolicy): void {
    this.policy = policy;
  }

  // ---- trap handlers --------------------------------------------------------------------------

  /** A trapped guest read of \`size\` bytes at \`offset\` in the register window. */
  read(offset: number, size: number): number {
    this.counters.exits++;
    const dword = offset & ~3;
    const value = this.readDword(dword);
    if (size >= 4) return value;
    return (value >>> ((offset & 3) * 8)) & (size === 1 ? 0xff : 0xffff);
  }

  /** A trapped guest write of \`size\` bytes at \`offset\` in the register window. */
  write(offset: number, size: number, value: number): void {
    this.counters.exits++;
    const dword = offset & ~3;
    if (size < 4) {
      // A narrow write to a register with side effects: widen it with the bytes it leaves alone
      // (zero for write-1 registers, where zero bits mean "no change").
      const shift = (offset & 3) * 8;
      const lanes = ((size === 1 ? 0xff : 0xffff) << shift) >>> 0;
      const keep = this.isWriteOneRegister(dword) ? 0 : this.host.deviceRead(dword) & ~lanes;
      value = (keep | ((value << shift) & lanes)) >>> 0;
    }
    this.writeDword(dword, value >>> 0);
  }

  /** The device's interrupt line changed: completions may have happened. */
  deviceInterrupt(_level: boolean): void {
    if (this.devirtualized) return;
    this.syncAll();
  }

  /**
   * The device raised status (a command ended), whatever its interrupt line did. A VMM that can
   * tell lets the mediator's own commands wait for this instead of polling the device.
   */
  deviceStatus(): void {
    this.statusReported = true;
    for (const wake of this.statusWaiters.splice(0)) wake();
  }

  /** Until the device's next status (or a while), when it reports them; else a short poll. */
  private deviceEvent(attempt: number): Promise<void> {
    if (!this.statusReported) return this.host.sleep(attempt < 4 ? 0 : Math.min(1, attempt / 100));
    return new Promise((resolve) => {
      this.statusWaiters.push(resolve);
      // A safety net: a status that came between the check and now, or one never reported.
      void this.host.sleep(10).then(() => {
        const i = this.statusWaiters.indexOf(resolve);
        if (i >= 0) this.statusWaiters.splice(i, 1);
        resolve();
      });
    });
  }

  private readDword(offset: number): number {
    const port = this.portAt(offset);
    if (port < 0) {
      if (offset === ${n.H}_BASE + ${n.hostIs}) {
        this.syncAll();
        return this.guestHostIs();
      }
      return this.host.deviceRead(offset);
    }
    const shadow = this.ports[port]!;
    const register = offset - this.portBase(port);
    switch (register) {
      case ${n.ci}:
        this.sync(port);
        return shadow.issued >>> 0;
      case ${n.sact}:
        this.sync(port);
        return shadow.queued >>> 0;
      case ${n.is}:
        this.sync(port);
        return this.guestPortIs(port);
      case ${n.tfd}:
        this.sync(port);
        return shadow.taskFile ?? this.host.deviceRead(offset);
      case ${n.clb}:
      case ${n.clbu}:
      case ${n.fb}:
      case ${n.fbu}:
        if (shadow.guestLists) return shadow.guestLists[this.listIndex(register)]!;
        if (!shadow.listsRefused) return this.host.deviceRead(offset);
        // What the device would show: the reserved low bits of the base registers read 0.
        return (shadow.listRegs[this.listIndex(register)]! & [${n.clbMask}, 0xffffffff, ${n.fbMask}, 0xffffffff][this.listIndex(register)]!) >>> 0;
      case ${n.cmd}: {
        const device = this.host.deviceRead(offset);
        const own = shadow.own;
        if (own === null) return device;
        // While the mediator's command runs, the guest sees the engine it asked for: ST and FRE
        // as it wrote them, CR and FR following them.
        const engine = ${n.st} | ${n.fre} | ${n.cr} | ${n.fr};
        const running = ((own.guestCmd & ${n.st}) !== 0 ? ${n.cr} : 0) | ((own.guestCmd & ${n.fre}) !== 0 ? ${n.fr} : 0);
        return ((device & ~engine) | (own.guestCmd & (${n.st} | ${n.fre})) | running) >>> 0;
      }
      default:
        return shadow.owedRegisters?.get(register) ?? this.host.deviceRead(offset);
    }
  }

  private writeDword(offset: number, value: number): void {
    const port = this.portAt(offset);
    if (port < 0) {
      if (offset === ${n.H}_BASE + ${n.hostIs}) return this.writeHostIs(value);
      if (offset === ${n.H}_BASE + ${n.ghc}) return this.writeGlobalControl(value);
      return this.host.deviceWrite(offset, value);
    }
    const shadow = this.ports[port]!;
    const register = offset - this.portBase(port);
    switch (register) {
      case ${n.ci}:
        return this.issue(port, value);
      case ${n.sact}:
        // Tags are shown to the device only together with their command (a redirected one never is).
        shadow.queued = (shadow.queued | value) >>> 0;
        return;
      case ${n.is}:
        return this.writePortIs(port, value);
      case ${n.ie}:
        this.host.deviceWrite(offset, value);
        return this.raise(port);
      case ${n.clb}:
      case ${n.clbu}:
      case ${n.fb}:
      case ${n.fbu}:
        shadow.listRegs[this.listIndex(register)] = value;
        if (shadow.guestLists) {
          shadow.guestLists[this.listIndex(register)] = value;
          return;
        }
        return this.programLists(port);
      case ${n.cmd}:
        return this.writeCommand(port, value);
${n.portResets
  .map(
    (r) => `      case ${r.register}:
        if ((value & ${r.mask}) !== 0) {
          this.abortOwn(port, false);
          this.dropCommands(port, true);
        }
        return this.host.deviceWrite(offset, value);`,
  )
  .join("\n")}
      default:
        return this.host.deviceWrite(offset, value);
    }
  }

  /**
   * Gives the device the guest's command list and FIS area, unless they lie outside the guest's
   * memory: then the device gets the port's private area (it would otherwise write FISes into
   * VMM memory), the guest still reads back what it wrote, and its commands are refused.
   */
  private programLists(port: number): void {
    const shadow = this.ports[port]!;
    const [clb, clbu, fb, fbu] = shadow.listRegs;
    const list = (clb & ${n.clbMask}) + clbu * 2 ** 32;
    const fisArea = (fb & ${n.fbMask}) + fbu * 2 ** 32;
    const ok = this.host.isGuestRange(list, ${n.listSize}) && this.host.isGuestRange(fisArea, ${n.fisAreaSize});
    if (!ok) this.counters.refusedAddresses++;
    shadow.listsRefused = !ok;
    const area = this.portArea(port);
    this.installLists(port, ok ? list : area, ok ? fisArea : area + ${n.listSize});
  }

  private listIndex(register: number): number {
    switch (register) {
      case ${n.clb}:
        return 0;
      case ${n.clbu}:
        return 1;
      case ${n.fb}:
        return 2;
      default:
        return 3;
    }
  }

  private isWriteOneRegister(offset: number): boolean {
    const port = this.portAt(offset);
    if (port < 0) return offset === ${n.H}_BASE + ${n.hostIs};
    const register = offset - this.portBase(port);
    return register === ${n.ci} || register === ${n.sact} || register === ${n.is};
  }

  private portAt(offset: number): number {
    const relative = offset - ${n.P}_BASE;
    if (relative < 0) return -1;
    const port = Math.floor(relative / ${n.P}_STRIDE);
    return port < ${n.P}_COUNT ? port : -1;
  }

  private portBase(port: number): number {
    return ${n.P}_BASE + port * ${n.P}_STRIDE;
  }

  // ---- interpret: guest commands --------------------------------------------------------------

  private issue(port: number, value: number): void {
    const shadow = this.ports[port]!;
    const fresh = (value & ~shadow.issued) >>> 0;
    if (fresh === 0) return;
    shadow.issued = (shadow.issued | fresh) >>> 0;
    for (let slot = 0; slot < 32; slot++) {
      const bit = (1 << slot) >>> 0;
      if ((fresh & bit) === 0) continue;
      this.counters.guestCommands++;
      const request = this.decode(port, slot);
      if (request === null) continue;
      shadow.requests[slot] = request;
      // A port halted on an emulated error runs nothing until the guest restarts its engine,
      // which drops the command.
      if (shadow.stopped) continue;
      this.apply(port, slot, request, this.policy.interpret(request), shadow.epoch, true);
    }
  }

  private apply(port: number, slot: number, request: GuestRequest, decision: Decision, epoch: number, checkedNow = false): void {
    const shadow = this.ports[port]!;
    const bit = (1 << slot) >>> 0;
    switch (decision.action) {
      case "pass":
        // Held also while the device's engine is off: the device would read the command only
        // when it starts, after the guest had time to change what the mediator checked.
        if (
          shadow.own !== null ||
          shadow.pending.some((p) => p.urgent) ||
          shadow.held.length > 0 ||
          (this.host.deviceRead(this.portBase(port) + ${n.cmd}) & ${n.st}) === 0
        ) {
          this.hold(port, slot);
        } else {
          this.forward(port, slot, request, checkedNow);
        }
        return;
      case "complete":
        this.counters.redirected++;
        shadow.emulated = (shadow.emulated | bit) >>> 0;
        // A queued command is accepted at once (its slot frees); its tag stays until completion.
        if (request.queued) shadow.issued = (shadow.issued & ~bit) >>> 0;
        decision.result.then(
          () => this.emulateCompletion(port, slot, epoch, null),
          (error: unknown) => this.emulateCompletion(port, slot, epoch, completionError(error)),
        );
        return;
      case "defer":
        this.counters.deferred++;
        shadow.deferred = (shadow.deferred | bit) >>> 0;
        decision.until.then(
          (next) => {
            if (shadow.epoch !== epoch || (shadow.deferred & bit) === 0) return;
            shadow.deferred = (shadow.deferred & ~bit) >>> 0;
            this.apply(port, slot, request, next, epoch);
          },
          (error: unknown) => {
            if (shadow.epoch !== epoch || (shadow.deferred & bit) === 0) return;
            shadow.deferred = (shadow.deferred & ~bit) >>> 0;
            shadow.emulated = (shadow.emulated | bit) >>> 0;
            this.emulateCompletion(port, slot, epoch, completionError(error));
          },
        );
        return;
    }
  }

  private hold(port: number, slot: number): void {
    this.counters.held++;
    this.ports[port]!.held.push(slot);
  }

  private forward(port: number, slot: number, request: GuestRequest, checkedNow = false): void {
    const shadow = this.ports[port]!;
    // Checked again unless it was checked in this same step: the guest may have rewritten its
    // tables while the command waited (the device reads them when the doorbell rings).
    if (!checkedNow && this.decode(port, slot) === null) return;
    const bit = (1 << slot) >>> 0;
    const base = this.portBase(port);
    this.counters.passed++;
    shadow.taskFile = null;
    shadow.onDevice = (shadow.onDevice | bit) >>> 0;
    if (request.queued) {
      shadow.queuedOnDevice = (shadow.queuedOnDevice | bit) >>> 0;
      this.host.deviceWrite(base + ${n.sact}, bit);
    }
    this.host.deviceWrite(base + ${n.ci}, bit);
  }

  /** Sends held guest commands to the device in the order they were issued. */
  private release(port: number): void {
    const shadow = this.ports[port]!;
    if (shadow.own !== null) return;
    for (const slot of shadow.held.splice(0)) {
      const request = shadow.requests[slot];
      if (request !== undefined) this.forward(port, slot, request);
    }
  }

  /**
   * Reads the command header, command table and descriptor table the guest set up for \`slot\`,
   * checking every address against the guest's memory. A pointer outside the guest's memory
   * fails the command as a host bus fatal error, and nothing outside the guest is touched.
   */
  /** Guest memory parsed at once, in this step: a live view where the memory has one (no copy). */
  private view(address: number, length: number): Uint8Array {
    const memory = this.host.memory;
    return memory.liveView ? memory.liveView(address, length) : memory.read(address, length);
  }

  private decode(port: number, slot: number): GuestRequest | null {
    const lists = this.ports[port]!.guestLists ?? this.readLists(port);
    const listBase = lists[0] + lists[1] * 2 ** 32;
    const headerAddress = listBase + ${n.listSlotOffset} + slot * ${n.headerSize};
    if (!this.guestRange(headerAddress, ${n.headerSize})) return this.refuse(port, slot);
    const header = decode${n.header}(this.view(headerAddress, ${n.headerSize}));
    const tableAddress = header.${hf.ctba} + ${hf.ctbau ? `header.${hf.ctbau} * 2 ** 32` : "0"};
    const entries = ${field(`header.${hf.prdtl.member}`, hf.prdtl)};
    const tableBytes = ${n.prdtOffset} + entries * ${n.prdSize};
    if (tableAddress % ${n.tableAlign} !== 0 || !this.guestRange(tableAddress, Math.max(tableBytes, ${n.tableFixedSize}))) {
      return this.refuse(port, slot);
    }
    const table = this.view(tableAddress, Math.max(tableBytes, ${n.tableFixedSize}));
    const buffers: { address: number; length: number }[] = [];
    let bufferBytes = 0;
    for (let i = 0; i < entries; i++) {
      const entry = decode${n.prd}(table, ${n.prdtOffset} + i * ${n.prdSize});
      const address = entry.${pf.dba} + ${pf.dbau ? `entry.${pf.dbau} * 2 ** 32` : "0"};
      const length = ${field(`entry.${pf.length.member}`, pf.length)} + ${pf.length.add};
      if (!this.guestRange(address, length)) return this.refuse(port, slot);
      buffers.push({ address, length });
      bufferBytes += length;
    }
    const fisBytes = table.subarray(${n.tableCommandOffset}, ${n.tableCommandOffset} + ${n.tableFixedSize});
    const fisLength = ${field(`header.${hf.cfl.member}`, hf.cfl)} * DWORD;
    // The device reads the FIS whatever CFL says, so the mediator decodes it the same way;
    // a short CFL is only counted.
    const wellFormed = (() => {
      const bytes = fisBytes;
      return ${n.fisConstantCheck};
    })();
    if (fisLength < 20) this.counters.malformed++;
    const command: ${n.commandType} = wellFormed
      ? ${n.decodeCommand}(decode${n.fisStruct}(fisBytes))
      : { kind: "other", opcode: fisBytes[2] ?? 0 };
    if (!wellFormed) this.counters.malformed++;
    // A queued command must carry its slot as its tag (AHCI 1.3.1, 5.6.2.3); another tag would
    // complete a different slot's bit and leave this one on the device forever.
    if ((command.kind === "read" || command.kind === "write") && command.queued && command.tag !== slot) {
      this.counters.malformed++;
      return this.refuse(port, slot);
    }
    return this.request(port, slot, headerAddress, command, buffers, bufferBytes);
  }

  private request(
    port: number,
    slot: number,
    headerAddress: number,
    command: ${n.commandType},
    buffers: readonly { address: number; length: number }[],
    bufferBytes: number,
  ): GuestRequest {
    const memory = this.host.memory;
    const op = command.kind === "read" || command.kind === "write" || command.kind === "flush" ? command.kind : "other";
    const ranged = command.kind === "read" || command.kind === "write";
    return {
      port,
      slot,
      op,
      lba: ranged ? command.lba : 0,
      sectors: ranged ? command.sectors : 0,
      queued: ranged ? command.queued : false,
      command,
      bufferBytes,
      headerAddress,
      readData(): Uint8Array {
        const out = new Uint8Array(ranged ? command.sectors * SECTOR : bufferBytes);
        let at = 0;
        for (const b of buffers) {
          if (at >= out.length) break;
          const take = Math.min(b.length, out.length - at);
          out.set(memory.read(b.address, take), at);
          at += take;
        }
        return out;
      },
      writeData(data: Uint8Array): boolean {
        if (bufferBytes < data.length) return false;
        let at = 0;
        for (const b of buffers) {
          if (at >= data.length) break;
          const take = Math.min(b.length, data.length - at);
          memory.write(b.address, data.subarray(at, at + take));
          at += take;
        }
        return true;
      },
    } as GuestRequest;
  }

  private guestRange(address: number, length: number): boolean {
    if (this.host.isGuestRange(address, length)) return true;
    this.counters.refusedAddresses++;
    return false;
  }

  /** A command whose pointers leave the guest's memory fails as a host bus fatal error. */
  private refuse(port: number, slot: number): null {
    const shadow = this.ports[port]!;
    shadow.emulated = (shadow.emulated | (1 << slot)) >>> 0;
    shadow.emulatedIs = (shadow.emulatedIs | ${n.hostBusFatal}) >>> 0;
    shadow.stopped = true;
    this.raise(port);
    return null;
  }

  private readLists(port: number): [number, number, number, number] {
    const base = this.portBase(port);
    return [
      this.host.deviceRead(base + ${n.clb}) & ${n.clbMask},
      this.host.deviceRead(base + ${n.clbu}),
      this.host.deviceRead(base + ${n.fb}) & ${n.fbMask},
      this.host.deviceRead(base + ${n.fbu}),
    ];
  }

  // ---- redirect: completions the mediator emulates --------------------------------------------

  private emulateCompletion(port: number, slot: number, epoch: number, error: CompletionError | "overflow" | null): void {
    const shadow = this.ports[port]!;
    const bit = (1 << slot) >>> 0;
    if (shadow.epoch !== epoch || (shadow.emulated & bit) === 0) return;
    const request = shadow.requests[slot];
    shadow.emulated = (shadow.emulated & ~bit) >>> 0;
    const lists = shadow.guestLists ?? this.readLists(port);
    const fisArea = lists[2] + lists[3] * 2 ** 32;
    const fisOk = this.host.isGuestRange(fisArea, ${n.fisAreaSize});
    const queued = request?.queued ?? false;
    if (error === null) {
      const status = DEVICE.readyStatus;
      if (queued) {
        shadow.queued = (shadow.queued & ~bit) >>> 0;
        if (fisOk) {
          const fis = empty${n.sdb}();
          fis.STATUS = status & ${n.sdbStatusMask};
          fis.${n.sdbInterruptField.member} |= ${n.sdbInterruptField.mask};
          fis.ACTIVE = bit;
          this.host.memory.write(fisArea + ${n.sdbOffset}, encode${n.sdb}(fis));
        }
        shadow.emulatedIs = (shadow.emulatedIs | ${n.completeQueuedBit}) >>> 0;
      } else {
        shadow.issued = (shadow.issued & ~bit) >>> 0;
        if (request !== undefined) this.writeTransferred(request, request.sectors * SECTOR);
        if (fisOk) this.host.memory.write(fisArea + ${n.d2hOffset}, encode${n.d2h}(this.registerFis(status, 0)));
        shadow.emulatedIs = (shadow.emulatedIs | ${n.completeBit}) >>> 0;
      }
      shadow.taskFile = status;
    } else {
      // As a disk does: error status in the task file and a register FIS, the command stays
      // issued and the port halts until software stops and restarts it.
      const errorCode = error === "media" ? DEVICE.mediaError : DEVICE.abortError;
      const status = DEVICE.errorStatus;
      if (fisOk) this.host.memory.write(fisArea + ${n.d2hOffset}, encode${n.d2h}(this.registerFis(status, errorCode)));
      shadow.taskFile = ((errorCode << ${n.tfdErrorShift}) | status) >>> 0;
      const extra = error === "overflow" ? ${n.overflow} : 0;
      shadow.emulatedIs = (shadow.emulatedIs | ${n.errorBit} | ${n.completeBit} | extra) >>> 0;
      shadow.stopped = true;
    }
    this.raise(port);
    this.maybeIdle(port);
  }

  private registerFis(status: number, error: number) {
    const fis = empty${n.d2h}();
    fis.STATUS = status;
    fis.ERROR = error;
    fis.${n.interruptField.member} |= ${n.interruptField.mask};
    return fis;
  }

  private writeTransferred(request: GuestRequest, bytes: number): void {
    const address = (request as GuestRequest & { headerAddress: number }).headerAddress;
    // Re-encode into the bytes read, so reserved bytes of the header stay as the guest left them.
    const raw = this.host.memory.read(address, ${n.headerSize});
    const header = decode${n.header}(raw);
    header.${hf.transferred} = Math.min(bytes, request.bufferBytes) >>> 0;
    this.host.memory.write(address, encode${n.header}(header, raw));
  }

  // ---- interrupts -----------------------------------------------------------------------------

  private guestPortIs(port: number): number {
    const shadow = this.ports[port]!;
    const device = this.host.deviceRead(this.portBase(port) + ${n.is});
    const visible = shadow.own ? device & shadow.own.isBefore : device;
    return (visible | shadow.emulatedIs) >>> 0;
  }

  /**
   * The summary register as the guest sees it: the device's bits (less those of the mediator's
   * own commands) and the latched bits of emulated completions, which re-latch, as the device's
   * do, while the port's emulated status is enabled.
   */
  private guestHostIs(): number {
    let summary = this.host.deviceRead(${n.H}_BASE + ${n.hostIs});
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const shadow = this.ports[port]!;
      if (shadow.own === null && shadow.emulatedIs === 0) continue;
      const bit = 1 << port;
      const enabled = this.host.deviceRead(this.portBase(port) + ${n.ie});
      // While the mediator's command runs, the port's bit is what the guest's own status makes it.
      if (shadow.own) summary = (summary & ~bit) | (shadow.own.hostIsBefore & bit);
      if ((this.guestPortIs(port) & enabled) !== 0) summary |= bit;
    }
    return (summary | this.emulatedHostIs) >>> 0;
  }

  /** An emulated completion raised status bits: latch the summary bit if enabled, update the line. */
  private raise(port: number): void {
    const shadow = this.ports[port]!;
    const enabled = this.host.deviceRead(this.portBase(port) + ${n.ie});
    if ((shadow.emulatedIs & enabled) !== 0) this.emulatedHostIs = (this.emulatedHostIs | (1 << port)) >>> 0;
    this.updateLine();
  }

  private updateLine(): void {
    const enabled = (this.host.deviceRead(${n.H}_BASE + ${n.ghc}) & ${n.ghcIe}) !== 0;
    this.host.setGuestInterrupt(enabled && this.guestHostIs() !== 0);
  }

  private writePortIs(port: number, value: number): void {
    const shadow = this.ports[port]!;
    shadow.emulatedIs = (shadow.emulatedIs & ~value) >>> 0;
    if (shadow.own) shadow.own.isBefore = (shadow.own.isBefore & ~value) >>> 0;
    this.host.deviceWrite(this.portBase(port) + ${n.is}, value);
    this.updateLine();
  }

  private writeHostIs(value: number): void {
    this.emulatedHostIs = (this.emulatedHostIs & ~value) >>> 0;
    let forward = value;
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const own = this.ports[port]!.own;
      if (own) {
        own.hostIsBefore = (own.hostIsBefore & ~value) >>> 0;
        forward &= ~(1 << port);
      }
    }
    this.host.deviceWrite(${n.H}_BASE + ${n.hostIs}, forward >>> 0);
    this.updateLine();
  }

  // ---- reset and engine -----------------------------------------------------------------------

  private writeGlobalControl(value: number): void {
    if ((value & ${n.ghcHr}) !== 0) {
      for (let port = 0; port < ${n.P}_COUNT; port++) {
        this.abortOwn(port, true);
        this.dropCommands(port, true);
      }
      this.emulatedHostIs = 0;
    }
    this.host.deviceWrite(${n.H}_BASE + ${n.ghc}, value);
    this.updateLine();
  }

  private writeCommand(port: number, value: number): void {
    const shadow = this.ports[port]!;
    const own = shadow.own;
    if (own !== null) {
      // The mediator's command is running with its own lists: the guest's engine bits take
      // effect when it is done (a real engine also needs time to stop).
      const engine = ${n.st} | ${n.fre};
      if ((own.guestCmd & ${n.st}) !== 0 && (value & ${n.st}) === 0) this.dropCommands(port, false);
      own.guestCmd = ((own.guestCmd & ~engine) | (value & engine)) >>> 0;
      this.host.deviceWrite(this.portBase(port) + ${n.cmd}, (value & ~engine) | (this.host.deviceRead(this.portBase(port) + ${n.cmd}) & engine));
      if ((value & ${n.fre}) !== 0) this.deliverOwed(port);
      return;
    }
    const before = this.host.deviceRead(this.portBase(port) + ${n.cmd});
    if ((before & ${n.st}) !== 0 && (value & ${n.st}) === 0) this.dropCommands(port, false);
    this.host.deviceWrite(this.portBase(port) + ${n.cmd}, value);
    if ((value & ${n.fre}) !== 0) this.deliverOwed(port);
    // Commands issued while the engine was off go now, checked again.
    if ((before & ${n.st}) === 0 && (value & ${n.st}) !== 0) this.release(port);
  }

  /**
   * A reset while the mediator's own command runs: the command is lost, and the guest's lists
   * and engine bits go back at once (an HBA reset clears the lists anyway), before the reset.
   */
  private abortOwn(port: number, hbaReset: boolean): void {
    const shadow = this.ports[port]!;
    const own = shadow.own;
    if (own === null) return;
    // From here the guest's accesses go straight to the device again; the aborted run only
    // reports its failure when it notices.
    own.aborted = true;
    shadow.own = null;
    const lists = shadow.guestLists;
    shadow.guestLists = null;
    if (hbaReset || lists === null) return;
    const base = this.portBase(port);
    const engine = ${n.st} | ${n.fre};
    const cmd = this.host.deviceRead(base + ${n.cmd});
    this.host.deviceWrite(base + ${n.cmd}, cmd & ~engine);
    this.installLists(port, lists[0] + lists[1] * 2 ** 32, lists[2] + lists[3] * 2 ** 32);
    if ((own.guestCmd & ${n.fre}) !== 0) this.host.deviceWrite(base + ${n.cmd}, (cmd & ~engine) | ${n.fre});
    if ((own.guestCmd & ${n.st}) !== 0) this.host.deviceWrite(base + ${n.cmd}, (cmd & ~engine) | (own.guestCmd & engine));
  }

  /** Stopping the engine or resetting the HBA clears the guest's commands, as the device does. */
  private dropCommands(port: number, reset: boolean): void {
    const shadow = this.ports[port]!;
    shadow.epoch++;
    shadow.issued = 0;
    shadow.queued = 0;
    shadow.onDevice = 0;
    shadow.queuedOnDevice = 0;
    shadow.held = [];
    shadow.deferred = 0;
    shadow.emulated = 0;
    shadow.stopped = false;
    shadow.requests.length = 0;
    // The port may be idle now: the mediator's waiting commands get their turn.
    void Promise.resolve().then(() => this.maybeIdle(port));
    if (reset) {
      shadow.emulatedIs = 0;
      shadow.taskFile = null;
      // The device posts a new signature after the reset.
      shadow.owedFis = null;
      shadow.owedRegisters = null;
    }
  }

  // ---- completions on the device --------------------------------------------------------------

  private syncAll(): void {
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const shadow = this.ports[port]!;
      if (shadow.onDevice !== 0 || shadow.own !== null) this.sync(port);
    }
    this.updateLine();
  }

  /** Folds the device's progress into the guest's view: finished guest commands, the own command. */
  private sync(port: number): void {
    const shadow = this.ports[port]!;
    if (shadow.onDevice === 0) return;
    const base = this.portBase(port);
    const issued = this.host.deviceRead(base + ${n.ci});
    const active = this.host.deviceRead(base + ${n.sact});
    const failed = (this.host.deviceRead(base + ${n.is}) & ${n.errorBit}) !== 0;
    const accepted = shadow.onDevice & ~issued;
    const finished = (accepted & ~(shadow.queuedOnDevice & active)) >>> 0;
    // A queued command's slot frees when the device accepts it; its tag when it finishes.
    shadow.issued = (shadow.issued & ~accepted) >>> 0;
    if (finished === 0) return;
    shadow.onDevice = (shadow.onDevice & ~finished) >>> 0;
    shadow.queued = (shadow.queued & ~(finished & shadow.queuedOnDevice)) >>> 0;
    shadow.queuedOnDevice = (shadow.queuedOnDevice & ~finished) >>> 0;
    for (let slot = 0; slot < 32; slot++) {
      if ((finished & (1 << slot)) === 0) continue;
      const request = shadow.requests[slot];
      if (request) this.policy.completed?.(request, !failed);
    }
    this.maybeIdle(port);
  }

  private maybeIdle(port: number): void {
    const shadow = this.ports[port]!;
    this.startOwn(port);
    if (shadow.own === null && !this.guestBusy(shadow) && shadow.deferred === 0) this.policy.idle?.(port);
  }

  /**
   * The guest has work the device must see first. Deferred commands do not count: the policy
   * may be waiting for the mediator's own command to land before it lets them go.
   */
  private guestBusy(shadow: PortShadow): boolean {
    return (shadow.onDevice | shadow.emulated) !== 0 || shadow.held.length > 0;
  }

  // ---- multiplex: the mediator's own commands -------------------------------------------------

  /**
   * Runs a command of the mediator's own on \`port\` once no guest command is on the device.
   * \`urgent\` holds new guest commands until it has run (a guest command waits on it);
   * otherwise it yields to the guest (background work).
   */
  issueOwn(port: number, command: OwnCommand, urgent = false): Promise<OwnResult> {
    if (command.sectors > OWN_MAX_SECTORS || command.sectors * SECTOR > this.bufferBytes()) {
      return Promise.resolve({ ok: false, error: \`own command of \${command.sectors} sectors is too large\` });
    }
    return new Promise((resolve) => {
      const shadow = this.ports[port]!;
      shadow.pending.push({ command, urgent, resolve });
      if (shadow.onDevice === 0 && shadow.own === null) this.startOwn(port);
    });
  }

  /** Bytes of data one own command (or one batch of them) can carry. */
  bufferBytes(): number {
    return Math.floor((this.host.privateMemory.size - OWN_BUFFER) / 4096) * 4096;
  }

  private portArea(port: number): number {
    return this.host.privateMemory.base + port * PORT_AREA;
  }

  /**
   * Which pending own command goes next: the first urgent one, else the first, which as background
   * work waits while the guest has anything going on (urgent ones only for the device). -1: none.
   */
  private nextOwn(shadow: PortShadow): number {
    const urgent = shadow.pending.findIndex((p) => p.urgent);
    if (urgent >= 0) return urgent;
    return shadow.pending.length > 0 && !this.guestBusy(shadow) ? 0 : -1;
  }

  private startOwn(port: number): void {
    const shadow = this.ports[port]!;
    if (this.ownRunning || shadow.own !== null || shadow.onDevice !== 0) return;
    const at = this.nextOwn(shadow);
    if (at < 0) return;
    const batch = [shadow.pending[at]!];
    if (batch[0]!.command.op === "write" && batch[0]!.keep === undefined) {
      // The writes queued right behind it go along, side by side, while they fit and do not
      // overlap (the device may finish them in any order); a flush or read ends the batch.
      let bytes = batch[0]!.command.sectors * SECTOR;
      for (let i = at + 1; i < shadow.pending.length && batch.length < OWN_BATCH; i++) {
        const { command, keep } = shadow.pending[i]!;
        if (command.op !== "write" || keep !== undefined) break;
        if (bytes + command.sectors * SECTOR > this.bufferBytes()) break;
        if (batch.some((b) => overlaps(command, b.command))) break;
        bytes += command.sectors * SECTOR;
        batch.push(shadow.pending[i]!);
      }
    }
    shadow.pending.splice(at, batch.length);
    const base = this.portBase(port);
    const own: OwnRun = {
      batch,
      keep: batch[0]!.keep ?? 0,
      isBefore: this.host.deviceRead(base + ${n.is}),
      hostIsBefore: this.host.deviceRead(${n.H}_BASE + ${n.hostIs}),
      guestCmd: this.host.deviceRead(base + ${n.cmd}),
      aborted: false,
      settled: new Set(),
    };
    shadow.own = own;
    this.ownRunning = true;
    void this.runOwn(port, own);
  }

  private async runOwn(port: number, own: OwnRun): Promise<void> {
    const shadow = this.ports[port]!;
    const base = this.portBase(port);
    let failure: OwnResult = { ok: false, error: "aborted" };
    try {
      shadow.guestLists = this.readLists(port);
      const engineStopped = await this.stopEngine(port);
      if (own.aborted) throw new Error("aborted");
      if (!engineStopped) throw new Error("the port's engine did not stop");
      const list = this.portArea(port);
      const fisArea = list + ${n.listSize};
      this.installLists(port, list, fisArea);
      this.receiveOwn(port, own, fisArea);
      this.host.deviceWrite(base + ${n.cmd}, (this.host.deviceRead(base + ${n.cmd}) | ${n.fre} | ${n.st}) >>> 0);
      await this.executeOwn(port, own, list);
    } catch (error) {
      failure = { ok: false, error: error instanceof Error ? error.message : String(error) };
    }
    // Back to the guest's lists and engine state, then the guest's held commands go first.
    try {
      if (!own.aborted) {
        await this.stopEngine(port);
        const lists = shadow.guestLists!;
        this.installLists(port, lists[0] + lists[1] * 2 ** 32, lists[2] + lists[3] * 2 ** 32);
        const engine = ${n.st} | ${n.fre};
        const now = this.host.deviceRead(base + ${n.cmd});
        if ((own.guestCmd & ${n.fre}) !== 0) this.host.deviceWrite(base + ${n.cmd}, (now & ~engine) | ${n.fre});
        if ((own.guestCmd & ${n.st}) !== 0) this.host.deviceWrite(base + ${n.cmd}, (now & ~engine) | (own.guestCmd & engine));
        // Clear exactly the status bits the own command raised.
        const raised = this.host.deviceRead(base + ${n.is}) & ~own.isBefore & ~own.keep;
        if (raised) this.host.deviceWrite(base + ${n.is}, raised);
        const summary = this.host.deviceRead(${n.H}_BASE + ${n.hostIs}) & (1 << port) & ~own.hostIsBefore;
        if (own.keep !== 0) {
          // The device now shows the status the mediator had emulated: it is the device's again.
          shadow.emulatedIs = (shadow.emulatedIs & ~own.keep) >>> 0;
          this.emulatedHostIs = (this.emulatedHostIs & ~(1 << port)) >>> 0;
        } else if (summary) {
          this.host.deviceWrite(${n.H}_BASE + ${n.hostIs}, summary);
        }
      }
    } finally {
      if (shadow.own === own) {
        shadow.guestLists = null;
        shadow.own = null;
      }
      this.ownRunning = false;
    }
    // What did not finish (the port was reset under it, or it failed before it ran) fails.
    for (const pending of own.batch) this.settleOwn(own, pending, failure);
    this.updateLine();
    this.release(port);
    this.maybeIdle(port);
    // Other ports' own commands waited for the shared buffer: the next port in turn goes.
    for (let i = 1; i < ${n.P}_COUNT && !this.ownRunning; i++) this.startOwn((port + i) % ${n.P}_COUNT);
  }

  /**
   * Turns FIS reception on for the mediator's command. A register FIS the device posts right then
   * is not the command's: it was waiting for reception (the signature after a reset) and is owed
   * to the guest, which meanwhile still sees the task file it saw before.
   */
  private receiveOwn(port: number, own: OwnRun, fisArea: number): void {
    const shadow = this.ports[port]!;
    const base = this.portBase(port);
    const before = this.portRegisters(port);
    this.host.deviceWrite(base + ${n.cmd}, (this.host.deviceRead(base + ${n.cmd}) | ${n.fre}) >>> 0);
    const posted = this.host.deviceRead(base + ${n.is}) & ~before[${n.is} / 4]! & ${n.completeBit};
    if (posted === 0 || (own.guestCmd & ${n.fre}) !== 0) return;
    shadow.owedFis = this.host.memory.read(fisArea + ${n.d2hOffset}, ${n.d2hSize});
    shadow.owedTaskFile = this.host.deviceRead(base + ${n.tfd});
    shadow.taskFile ??= before[${n.tfd} / 4]!;
    // Whatever else the FIS set (the signature register) the guest sees as it was, until delivery.
    const after = this.portRegisters(port);
    shadow.owedRegisters = new Map();
    for (let i = 0; i < after.length; i++) {
      const register = i * 4;
      if (register === ${n.is} || register === ${n.cmd} || register === ${n.tfd} || after[i] === before[i]) continue;
      shadow.owedRegisters.set(register, before[i]!);
    }
  }

  private portRegisters(port: number): number[] {
    const base = this.portBase(port);
    return Array.from({ length: ${n.portSize} / 4 }, (_, i) => this.host.deviceRead(base + i * 4));
  }

  /** The guest turned FIS reception on: the register FIS it is owed lands now, as it would have. */
  private deliverOwed(port: number): void {
    const shadow = this.ports[port]!;
    const fis = shadow.owedFis;
    if (fis === null) return;
    shadow.owedFis = null;
    shadow.owedRegisters = null;
    const lists = shadow.guestLists ?? this.readLists(port);
    const fisArea = lists[2] + lists[3] * 2 ** 32;
    if (this.host.isGuestRange(fisArea, ${n.fisAreaSize})) this.host.memory.write(fisArea + ${n.d2hOffset}, fis);
    shadow.taskFile = shadow.owedTaskFile;
    shadow.emulatedIs = (shadow.emulatedIs | ${n.completeBit}) >>> 0;
    this.raise(port);
  }

  private installLists(port: number, list: number, fisArea: number): void {
    const base = this.portBase(port);
    this.host.deviceWrite(base + ${n.clb}, list % 2 ** 32);
    this.host.deviceWrite(base + ${n.clbu}, Math.floor(list / 2 ** 32));
    this.host.deviceWrite(base + ${n.fb}, fisArea % 2 ** 32);
    this.host.deviceWrite(base + ${n.fbu}, Math.floor(fisArea / 2 ** 32));
  }

  /** Clears the start and FIS-receive bits and waits for the engine to report it stopped. */
  private async stopEngine(port: number): Promise<boolean> {
    const base = this.portBase(port);
    const cmd = this.host.deviceRead(base + ${n.cmd});
    this.host.deviceWrite(base + ${n.cmd}, cmd & ~${n.st});
    if (!(await this.waitClear(base + ${n.cmd}, ${n.cr}))) return false;
    this.host.deviceWrite(base + ${n.cmd}, this.host.deviceRead(base + ${n.cmd}) & ~(${n.st} | ${n.fre}));
    return this.waitClear(base + ${n.cmd}, ${n.fr});
  }

  private async waitClear(offset: number, bits: number): Promise<boolean> {
    for (let attempt = 0; attempt < 1000; attempt++) {
      if ((this.host.deviceRead(offset) & bits) === 0) return true;
      await this.host.sleep(attempt < 10 ? 0 : 1);
    }
    return false;
  }

  /** Where an own write's data already lies in the VMM's DMA memory, suitably aligned; else undefined. */
  private inPlaceAddress(data: Uint8Array): number | undefined {
    const area = this.host.dmaMemory;
    if (area === undefined) return undefined;
    const address = this.host.memory.addressOf?.(data);
    if (address === undefined || address % ${n.dataAlign} !== 0) return undefined;
    return address >= area.base && address + data.length <= area.base + area.size ? address : undefined;
  }

  /**
   * Writes the run's commands into the private list and tables, issues them, and settles each as
   * it completes. A run of writes runs as queued commands, and while the guest has nothing waiting,
   * the next writes whose data already lies in DMA memory take the slots that free up: the device
   * is not left idle between batches. The run ends with its last command.
   */
  private async executeOwn(port: number, own: OwnRun, list: number): Promise<void> {
    const base = this.portBase(port);
    const shadow = this.ports[port]!;
    const streams = own.keep === 0 && own.batch.every(({ command }) => command.op === "write");
    const queued = streams || own.keep === ${n.completeQueuedBit};
    let buffer = this.host.privateMemory.base + OWN_BUFFER;
    const running: (PendingOwn | undefined)[] = [];
    const buffers: number[] = [];
    let mask = 0;
    for (const [slot, pending] of own.batch.entries()) {
      const { command } = pending;
      const bytes = command.op === "flush" ? 0 : command.sectors * SECTOR;
      if (command.op === "write" && (!command.data || command.data.length !== bytes)) {
        for (const other of own.batch) this.settleOwn(own, other, { ok: false, error: "write data does not match its sectors" });
        return;
      }
      const inPlace = command.op === "write" ? this.inPlaceAddress(command.data!) : undefined;
      if (command.op === "write" && inPlace === undefined) this.host.memory.write(buffer, command.data!);
      buffers[slot] = inPlace ?? buffer;
      this.prepareOwn(list, slot, command, buffers[slot]!, queued);
      running[slot] = pending;
      if (inPlace === undefined) buffer += (bytes + 4095) & ~4095;
      mask |= 1 << slot;
    }
    if (queued) this.host.deviceWrite(base + ${n.sact}, mask);
    this.host.deviceWrite(base + ${n.ci}, mask);
    for (let attempt = 0; mask !== 0; attempt++) {
      if (own.aborted) return;
      const status = this.host.deviceRead(base + ${n.is});
      if ((status & ${n.errorBit}) !== 0 && (own.isBefore & ${n.errorBit}) === 0) {
        const taskFile = this.host.deviceRead(base + ${n.tfd});
        const failed = { ok: false, error: \`device error, task file 0x\${taskFile.toString(16)}\` };
        for (const pending of running) if (pending !== undefined) this.settleOwn(own, pending, failed);
        return;
      }
      const outstanding = this.host.deviceRead(base + ${n.ci}) | (queued ? this.host.deviceRead(base + ${n.sact}) : 0);
      const done = mask & ~outstanding;
      if (done === 0) {
        await this.deviceEvent(attempt);
        continue;
      }
      attempt = -1;
      mask &= ~done;
      for (let rest = done; rest !== 0; rest &= rest - 1) {
        const slot = 31 - Math.clz32(rest & -rest);
        const pending = running[slot]!;
        const { command } = pending;
        running[slot] = undefined;
        this.settleOwn(own, pending, command.op === "read" ? { ok: true, data: this.host.memory.read(buffers[slot]!, command.sectors * SECTOR) } : { ok: true });
      }
      if (!streams) continue;
      // The status of what completed is seen: cleared, so that it is the device's again to raise.
      const raised = status & ~own.isBefore;
      if (raised) this.host.deviceWrite(base + ${n.is}, raised);
      const joined = this.joinOwn(shadow, own, list, running, buffers);
      if (joined !== 0) {
        mask |= joined;
        this.host.deviceWrite(base + ${n.sact}, joined);
        this.host.deviceWrite(base + ${n.ci}, joined);
      }
    }
  }

  /**
   * Puts the next pending writes into the run's free slots, in order, while each is a write whose
   * data lies in DMA memory (no buffer to share), overlaps nothing running, and is urgent or finds
   * the guest with nothing waiting. Returns the slots it filled.
   */
  private joinOwn(shadow: PortShadow, own: OwnRun, list: number, running: (PendingOwn | undefined)[], buffers: number[]): number {
    let joined = 0;
    for (let slot = 0; slot < OWN_BATCH && shadow.pending.length > 0; slot++) {
      if (running[slot] !== undefined) continue;
      const at = this.nextOwn(shadow);
      if (at < 0) break;
      const next = shadow.pending[at]!;
      const { command } = next;
      if (command.op !== "write" || next.keep !== undefined || command.data?.length !== command.sectors * SECTOR) break;
      const inPlace = this.inPlaceAddress(command.data);
      if (inPlace === undefined) break;
      if (running.some((r) => r !== undefined && overlaps(command, r.command))) break;
      shadow.pending.splice(at, 1);
      own.batch.push(next);
      this.prepareOwn(list, slot, command, inPlace, true);
      buffers[slot] = inPlace;
      running[slot] = next;
      joined |= 1 << slot;
    }
    return joined;
  }

  /** Writes the command table and header of one own command into \`slot\` of the private list. */
  private prepareOwn(list: number, slot: number, command: OwnCommand, data: number, queued: boolean): void {
    const bytes = command.op === "flush" ? 0 : command.sectors * SECTOR;
    const table = this.host.privateMemory.base + OWN_TABLES + slot * TABLE_STRIDE;
    const name = command.op === "read" ? (queued ? "${n.ownQueuedRead}" : "${n.ownRead}") : command.op === "write" ? (queued ? "${n.ownQueuedWrite}" : "${n.ownWrite}") : "${n.ownFlush}";
    const fis = ${n.encodeCommand}(name, { lba: command.lba, sectors: command.sectors, tag: slot });
    const tableBytes = new Uint8Array(${n.tableFixedSize} + ${n.prdSize} * Math.ceil(bytes / (PRD_BYTES)));
    tableBytes.set(encode${n.fisStruct}(fis), ${n.tableCommandOffset});
    let entries = 0;
    for (let at = 0; at < bytes; at += PRD_BYTES, entries++) {
      const entry = empty${n.prd}();
      const address = data + at;
      entry.${pf.dba} = address % 2 ** 32;
      ${pf.dbau ? `entry.${pf.dbau} = Math.floor(address / 2 ** 32);` : ""}
      const length = Math.min(PRD_BYTES, bytes - at);
      entry.${pf.length.member} = (entry.${pf.length.member} & ~${pf.length.mask}) | (((length - ${pf.length.add}) << ${pf.length.shift}) & ${pf.length.mask});
      encode${n.prd}(entry, tableBytes, ${n.prdtOffset} + entries * ${n.prdSize});
    }
    this.host.memory.write(table, tableBytes);
    const header = empty${n.header}();
    header.${hf.cfl.member} = (header.${hf.cfl.member} & ~${hf.cfl.mask}) | ((5 << ${hf.cfl.shift}) & ${hf.cfl.mask});
    if (command.op === "write") header.${hf.write.member} |= ${hf.write.mask};
    header.${hf.prdtl.member} = (header.${hf.prdtl.member} & ~${hf.prdtl.mask}) | ((entries << ${hf.prdtl.shift}) & ${hf.prdtl.mask});
    header.${hf.ctba} = table % 2 ** 32;
    ${hf.ctbau ? `header.${hf.ctbau} = Math.floor(table / 2 ** 32);` : ""}
    this.host.memory.write(list + ${n.listSlotOffset} + slot * ${n.headerSize}, encode${n.header}(header));
  }

  /** Gives an own command its result, once. */
  private settleOwn(own: OwnRun, pending: PendingOwn, result: OwnResult): void {
    if (own.settled.has(pending)) return;
    own.settled.add(pending);
    this.counters.ownCommands++;
    if (result.ok) this.counters.ownBytes += pending.command.sectors * SECTOR;
    pending.resolve(result);
  }

  /**
   * True while the guest has a command anywhere (on the device, held, deferred or being
   * completed), from the mediator's own state: no device access, no callbacks.
   */
  hasGuestWork(): boolean {
    for (const shadow of this.ports) {
      if (this.guestBusy(shadow) || shadow.deferred !== 0) return true;
    }
    return false;
  }

  /** True when no guest command is anywhere: on the device, held, deferred or being completed. */
  guestIdle(): boolean {
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const shadow = this.ports[port]!;
      this.sync(port);
      if (this.guestBusy(shadow) || shadow.deferred !== 0) return false;
    }
    return true;
  }

  // ---- de-virtualization ----------------------------------------------------------------------

  /**
   * True when nothing the guest has been shown differs from the device: no guest command in
   * flight, held or emulated, no emulated status pending, the guest's lists installed.
   */
  quiescent(): boolean {
    if (this.emulatedHostIs !== 0) return false;
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const shadow = this.ports[port]!;
      this.sync(port);
      if (this.guestBusy(shadow) || shadow.deferred !== 0 || shadow.own !== null || shadow.pending.length > 0) return false;
      if (shadow.emulatedIs !== 0 || shadow.stopped || shadow.guestLists !== null) return false;
      if (shadow.issued !== 0 || shadow.queued !== 0) return false;
      // An owed FIS is dropped if the guest never turned reception on: the one case where the
      // guest can tell (it would have got the FIS, and PxTFD from it, after de-virtualization).
      if (shadow.owedFis === null && shadow.taskFile !== null && shadow.taskFile !== this.host.deviceRead(this.portBase(port) + ${n.tfd})) return false;
    }
    return true;
  }

  /** Marks the mediator off (the VMM drops its traps); refuses unless quiescent. */
  devirtualize(): boolean {
    if (!this.quiescent()) {
      this.reconcile();
      return false;
    }
    this.devirtualized = true;
    return true;
  }

  /**
   * Completion status the mediator emulated and the guest has not cleared yet keeps the VMM in
   * place: software cannot set write-1-to-clear bits on the device. So the mediator lets the
   * device raise them itself, with a harmless command of its own (a flush for the register-FIS
   * bit, a one-sector queued read for the set-device-bits bit) whose status it then leaves set.
   */
  private reconcile(): void {
    for (let port = 0; port < ${n.P}_COUNT; port++) {
      const shadow = this.ports[port]!;
      if (shadow.own !== null || shadow.pending.length > 0 || this.guestBusy(shadow) || shadow.stopped) continue;
      for (const bit of [${n.completeBit}, ${n.completeQueuedBit}]) {
        if ((shadow.emulatedIs & bit) === 0) continue;
        const command: OwnCommand =
          bit === ${n.completeBit} ? { op: "flush", lba: 0, sectors: 0 } : { op: "read", lba: 0, sectors: 1 };
        shadow.pending.push({ command, urgent: false, keep: bit, resolve: () => {} });
        this.startOwn(port);
        return;
      }
    }
  }
}

/** Own commands whose sector ranges overlap: the device may finish side-by-side ones in any order. */
function overlaps(a: OwnCommand, b: OwnCommand): boolean {
  return a.lba < b.lba + b.sectors && b.lba < a.lba + a.sectors;
}

function completionError(error: unknown): CompletionError {
  const text = error instanceof Error ? String(error.cause ?? error.message) : String(error);
  return text === "aborted" ? "aborted" : "media";
}
`;
}
