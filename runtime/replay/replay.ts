import { createHash } from "node:crypto";
import { checkLbaPattern } from "../block/pattern.ts";
import type { Machine } from "../machine.ts";
import { type ContentCheck, type Trace, TraceError, type TraceOp } from "./trace.ts";

/** A machine prepared for one trace in one mode (bare, passthrough, streaming). */
export interface ReplayEnvironment {
  readonly machine: Machine;
  /** The disk as the guest would read it now (in streaming mode: local blocks or the image). */
  readDisk(lba: number, count: number): Promise<Uint8Array>;
  /** True when the device has no work pending for the guest (background work may go on). */
  guestIdle(): boolean;
  /** Streaming: copy everything and de-virtualize; elsewhere nothing to do. */
  finish(maxMs: number): Promise<void>;
  close(): Promise<void>;
}

export interface Failure {
  readonly line: number;
  readonly op: string;
  readonly message: string;
}

export interface ReplayResult {
  readonly name: string;
  readonly passed: number;
  readonly failed: number;
  readonly failures: readonly Failure[];
}

/** Wall-clock pause that lets timers, I/O callbacks and device completions run. */
const yieldToMachine = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Replays one trace on an environment. Expectation failures are collected, not thrown; a
 * malformed operation (an address no device answers, memory outside RAM) is a TraceError.
 */
export async function replayTrace(trace: Trace, env: ReplayEnvironment): Promise<ReplayResult> {
  let passed = 0;
  const failures: Failure[] = [];
  const check = (op: TraceOp, ok: boolean, message: () => string) => {
    if (ok) passed++;
    else failures.push({ line: op.line, op: op.op, message: message() });
  };
  const { machine } = env;
  const guestRam = machine.guestRamBytes;
  const inRam = (op: TraceOp, addr: number, len: number) => {
    if (addr + len > guestRam) {
      throw new TraceError(
        op.line,
        `guest RAM is ${guestRam} bytes; 0x${addr.toString(16)}+${len} is outside it`,
      );
    }
  };

  for (const op of trace.ops) {
    switch (op.op) {
      case "comment":
        break;
      case "mmio_write":
        mmioWrite(env, op.line, op.addr, op.size, op.value);
        break;
      case "mmio_read": {
        const value = mmioRead(env, op.line, op.addr, op.size);
        if (op.expect !== null) {
          const expect = op.expect;
          check(
            op,
            (value & op.mask) === (expect & op.mask),
            () => `${hex(op.addr)}: expected ${hex(expect)} (mask ${hex(op.mask)}), got ${hex(value)}`,
          );
        }
        break;
      }
      case "mem_write":
        inRam(op, op.addr, op.bytes.length);
        machine.memory.write(op.addr, op.bytes);
        break;
      case "mem_fill":
        inRam(op, op.addr, op.len);
        machine.memory.fill(op.addr, op.len, op.byte);
        break;
      case "mem_expect": {
        const length = contentLength(op.check);
        inRam(op, op.addr, length);
        const actual = machine.memory.read(op.addr, length);
        const verdict = compareContent(op.check, actual);
        check(op, verdict === null, () => `${hex(op.addr)}: ${verdict}`);
        break;
      }
      case "poll": {
        const start = performance.now();
        let value = mmioRead(env, op.line, op.addr, op.size);
        while ((value & op.mask) !== op.value && performance.now() - start < op.maxMs) {
          await yieldToMachine();
          value = mmioRead(env, op.line, op.addr, op.size);
        }
        check(
          op,
          (value & op.mask) === op.value,
          () =>
            `${hex(op.addr)}: expected ${hex(op.value)} under mask ${hex(op.mask)} within ${op.maxMs} ms, last read ${hex(value)}`,
        );
        break;
      }
      case "settle": {
        const start = performance.now();
        while (!env.guestIdle() && performance.now() - start < op.maxMs) await yieldToMachine();
        break;
      }
      case "irq":
        await yieldToMachine();
        check(
          op,
          machine.irqPending === op.expect,
          () =>
            `expected interrupt ${op.expect ? "pending" : "not pending"}, it is ${machine.irqPending ? "pending" : "not pending"}`,
        );
        break;
      case "disk_expect": {
        if (op.lba + op.count > trace.machine.diskSectors) {
          throw new TraceError(
            op.line,
            `sectors ${op.lba}..${op.lba + op.count} are beyond the disk (${trace.machine.diskSectors})`,
          );
        }
        const actual = await env.readDisk(op.lba, op.count);
        const verdict = compareContent(op.check, actual);
        check(op, verdict === null, () => `lba ${op.lba} count ${op.count}: ${verdict}`);
        break;
      }
      case "finish":
        await env.finish(op.maxMs);
        break;
    }
  }
  return { name: trace.name, passed, failed: failures.length, failures };
}

function mmioRead(env: ReplayEnvironment, line: number, addr: number, size: 1 | 2 | 4 | 8): bigint {
  guardMmio(env, line, addr, size);
  if (size === 8) {
    const low = BigInt(env.machine.mmioRead(addr, 4));
    const high = BigInt(env.machine.mmioRead(addr + 4, 4));
    return (high << 32n) | low;
  }
  return BigInt(env.machine.mmioRead(addr, size));
}

function mmioWrite(
  env: ReplayEnvironment,
  line: number,
  addr: number,
  size: 1 | 2 | 4 | 8,
  value: bigint,
): void {
  guardMmio(env, line, addr, size);
  if (size === 8) {
    env.machine.mmioWrite(addr, 4, Number(value & 0xffffffffn));
    env.machine.mmioWrite(addr + 4, 4, Number(value >> 32n));
    return;
  }
  env.machine.mmioWrite(addr, size, Number(value));
}

function guardMmio(env: ReplayEnvironment, line: number, addr: number, size: number): void {
  const { region } = env.machine;
  if (addr < region.base || addr + size > region.end) {
    throw new TraceError(
      line,
      `MMIO ${hex(BigInt(addr))} is outside the controller's registers (${hex(BigInt(region.base))}..${hex(BigInt(region.end))})`,
    );
  }
  if (addr % size !== 0)
    throw new TraceError(line, `MMIO ${hex(BigInt(addr))} is not aligned to its size ${size}`);
}

function contentLength(check: ContentCheck): number {
  return check.kind === "hex" ? check.bytes.length : check.length;
}

/** null when the content matches, else what differs. */
function compareContent(check: ContentCheck, actual: Uint8Array): string | null {
  switch (check.kind) {
    case "hex": {
      const at = actual.findIndex((b, i) => b !== check.bytes[i]);
      if (at < 0) return null;
      return `expected ${Buffer.from(check.bytes).toString("hex")}, got ${Buffer.from(actual).toString("hex")} (first difference at byte ${at})`;
    }
    case "sha256": {
      const digest = createHash("sha256").update(actual).digest("hex");
      return digest === check.digest ? null : `expected sha256 ${check.digest}, got ${digest}`;
    }
    case "pattern": {
      if (check.length % 512 !== 0) {
        const full = new Uint8Array(Math.ceil(check.length / 512) * 512);
        full.set(actual);
        const expected = new Uint8Array(full.length);
        // Compare the partial sector byte by byte against the pattern.
        for (let s = 0; s < full.length / 512; s++) {
          const value = BigInt(check.lba + s);
          for (let b = 0; b < 512; b++)
            expected[s * 512 + b] = Number((value >> BigInt((b % 8) * 8)) & 0xffn);
        }
        const at = actual.findIndex((b, i) => b !== expected[i]);
        return at < 0 ? null : `lba pattern from ${check.lba} differs at byte ${at}`;
      }
      const bad = checkLbaPattern(actual, check.lba);
      if (bad < 0) return null;
      const found = Buffer.from(actual.subarray(bad * 512, bad * 512 + 8)).readBigUInt64LE();
      return `lba pattern from ${check.lba}: sector ${check.lba + bad} holds data of sector ${found} (or other data)`;
    }
  }
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
