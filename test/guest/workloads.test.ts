import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { PatternSource } from "../../runtime/block/index.ts";
import { CowDisk } from "../../runtime/guest/cow.ts";
import {
  type BlockRecord,
  bootReplay,
  loadBlockTrace,
  parseBlockTrace,
  random,
  sequential,
  summarize,
} from "../../runtime/guest/workloads.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { boot, MODES, patternDisk } from "./helpers.ts";

const TRACE = "/work/shared/data/boot-blockio.jsonl";
const haveTrace = existsSync(TRACE);
const GIB2 = (2 * 1024 * 1024 * 1024) / 512;

function count(records: readonly BlockRecord[], op: BlockRecord["op"]): number {
  return records.filter((r) => r.op === op).length;
}

describe("block trace parser", () => {
  it("parses records and names the bad line", () => {
    const records = parseBlockTrace(
      '{"t_ms": 1.5, "op": "read", "lba": 8, "sectors": 8, "lat_ms": 0.1}\n\n{"t_ms": 2, "op": "flush", "lba": 0, "sectors": 0}\n',
    );
    expect(records).toHaveLength(2);
    expect(records[1]!.op).toBe("flush");
    expect(() =>
      parseBlockTrace('{"t_ms": 1, "op": "read", "lba": 0, "sectors": 1}\n{"t_ms": 2, "op": "trim"}', "x"),
    ).toThrow(/x:2: bad op trim/);
    expect(() => parseBlockTrace("{nope", "y")).toThrow(/y:1: not JSON/);
    expect(() => parseBlockTrace('{"t_ms": 1, "op": "read", "lba": -4, "sectors": 1}')).toThrow(/bad lba/);
    expect(() => parseBlockTrace('{"t_ms": 1, "op": "write", "lba": 4, "sectors": 0}')).toThrow(/0 sectors/);
  });

  it.runIf(haveTrace)("loads the recorded boot", async () => {
    const records = await loadBlockTrace(TRACE);
    expect(records.length).toBeGreaterThan(1000);
    expect(count(records, "read")).toBeGreaterThanOrEqual(1159);
    expect(records.every((r) => r.lba + r.sectors <= GIB2)).toBe(true);
  });
});

describe("summarize", () => {
  it("gives nearest-rank percentiles", () => {
    const s = summarize(Float64Array.from({ length: 100 }, (_, i) => 100 - i));
    expect(s).toMatchObject({ min: 1, max: 100, p50: 50, p90: 90, p99: 99, p999: 100, mean: 50.5 });
  });
});

describe.each(MODES)("workloads ($name)", ({ mediated }) => {
  it.runIf(haveTrace)("replays the recorded boot with no think time", async () => {
    const records = await loadBlockTrace(TRACE);
    const disk = new CowDisk(new PatternSource(GIB2));
    const { driver } = await boot({ disks: [disk], mediated });
    const stats = await bootReplay(driver, records, { thinkTimeScale: 0, verify: "lba" });
    expect(stats.errors).toBe(0);
    expect(stats.errorMessages).toEqual([]);
    expect(stats.reads).toBe(count(records, "read"));
    expect(stats.writes).toBe(count(records, "write"));
    expect(stats.flushes).toBe(count(records, "flush"));
    expect(stats.ops).toBe(records.length);
    const sectors = (op: BlockRecord["op"]) =>
      records.filter((r) => r.op === op).reduce((sum, r) => sum + r.sectors, 0);
    expect(stats.bytesRead).toBe(sectors("read") * 512);
    expect(stats.bytesWritten).toBe(sectors("write") * 512);
    // Every read matched the pattern (writes carry it too).
    expect(stats.verified).toBe(stats.reads);
    expect(stats.mismatches).toBe(0);
    // Every request has its completion time, after its issue.
    expect(stats.requests).toHaveLength(records.length);
    for (const r of stats.requests) expect(r.completedAt).toBeGreaterThanOrEqual(r.issuedAt);
    // The recorded overlap is kept: at most what the recording had outstanding.
    const recordedMax = Math.max(...records.map((r) => r.outstanding_at_issue ?? 1));
    expect(stats.maxOutstanding).toBeGreaterThan(1);
    expect(stats.maxOutstanding).toBeLessThanOrEqual(recordedMax + 1);
    expect(disk.writtenSectors).toBeGreaterThan(0);
  });

  it("sequential and random reads verify; writes keep the pattern", async () => {
    const { driver } = await boot({ disks: [patternDisk(1 << 17)], mediated });
    const seq = await sequential(driver, {
      op: "read",
      blockBytes: 128 * 1024,
      totalBytes: 16 * 1024 * 1024,
      queueDepth: 8,
      verify: "lba",
    });
    expect(seq).toMatchObject({
      ops: 128,
      reads: 128,
      bytesRead: 16 * 1024 * 1024,
      errors: 0,
      mismatches: 0,
    });
    expect(seq.verified).toBe(128);
    expect(seq.durationMs).toBeGreaterThan(0);
    expect(seq.latencyMs.max).toBeGreaterThanOrEqual(seq.latencyMs.p50);
    const mixed = await random(driver, {
      mix: 0.7,
      blockBytes: 4096,
      count: 2000,
      queueDepth: 32,
      seed: 3,
      verify: "lba",
    });
    expect(mixed.ops).toBe(2000);
    expect(mixed.reads + mixed.writes).toBe(2000);
    expect(mixed.reads).toBeGreaterThan(1200);
    expect(mixed.writes).toBeGreaterThan(400);
    expect(mixed).toMatchObject({ errors: 0, mismatches: 0 });
    const again = await random(driver, {
      op: "read",
      blockBytes: 65536,
      count: 200,
      queueDepth: 4,
      verify: "lba",
    });
    expect(again).toMatchObject({ ops: 200, errors: 0, mismatches: 0, verified: 200 });
    const writes = await sequential(driver, {
      op: "write",
      blockBytes: 4096,
      totalBytes: 1 << 20,
      queueDepth: 32,
    });
    expect(writes).toMatchObject({ ops: 256, writes: 256, bytesWritten: 1 << 20, errors: 0 });
  });

  it("counts device errors instead of stopping", async () => {
    const { driver } = await boot({ disks: [patternDisk(1024)], mediated });
    const records: BlockRecord[] = [
      { t_ms: 0, op: "read", lba: 0, sectors: 8 },
      { t_ms: 1, op: "read", lba: 1010, sectors: 24 },
    ];
    // A request beyond the disk is refused before any I/O, with the request named.
    await expect(bootReplay(driver, records, { thinkTimeScale: 0 })).rejects.toThrow(
      /boot trace request #1 \(read of 24 sectors at LBA 1010\) ends beyond the disk \(1024 sectors\)/,
    );
    expect(driver.stats.commands).toBe(3);
  });
});

describe("timing on a virtual clock", () => {
  it("takes exactly the time the device latency implies", async () => {
    const clock = new VirtualClock();
    const { driver } = await boot({ disks: [patternDisk(1 << 16)], clock, latencyMs: 2 });
    const qd1 = await sequential(driver, {
      op: "read",
      blockBytes: 4096,
      totalBytes: 64 * 4096,
      queueDepth: 1,
    });
    expect(qd1.durationMs).toBe(64 * 2);
    expect(qd1.latencyMs).toMatchObject({ min: 2, p50: 2, max: 2 });
    expect(qd1.iops).toBe(500);
    const qd8 = await sequential(driver, {
      op: "read",
      blockBytes: 4096,
      totalBytes: 64 * 4096,
      queueDepth: 8,
    });
    expect(qd8.durationMs).toBe((64 / 8) * 2);
    const qd32 = await random(driver, {
      op: "read",
      blockBytes: 4096,
      count: 320,
      queueDepth: 32,
      verify: "lba",
    });
    expect(qd32.durationMs).toBe((320 / 32) * 2);
    expect(qd32.mismatches).toBe(0);
    // A flush waits for the queue to drain: 32 writes (one wave), then the flush alone.
    const start = clock.now();
    await Promise.all([
      ...Array.from({ length: 32 }, (_, i) => driver.write(i * 8, new Uint8Array(4096))),
      driver.flush(),
    ]);
    expect(clock.now() - start).toBe(2 + 2);
  });

  it.runIf(haveTrace)("replays the boot at recorded pace in virtual time", async () => {
    const clock = new VirtualClock();
    const records = await loadBlockTrace(TRACE);
    const { driver } = await boot({ disks: [new CowDisk(new PatternSource(GIB2))], clock });
    const stats = await bootReplay(driver, records, { thinkTimeScale: 1 });
    const span = records[records.length - 1]!.t_ms - records[0]!.t_ms;
    expect(stats.errors).toBe(0);
    expect(stats.durationMs).toBeCloseTo(span, 6);
    // Each request went out at its recorded offset.
    for (const [i, r] of stats.requests.entries()) {
      expect(r.issuedAt).toBeCloseTo(records[i]!.t_ms - records[0]!.t_ms, 6);
    }
  });
});
