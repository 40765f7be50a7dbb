import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { checkLbaPattern } from "../../runtime/block/pattern.ts";
import { streamingEnvironment } from "../../runtime/deploy/streaming-replay.ts";
import { replayTrace } from "../../runtime/replay/replay.ts";
import { parseTrace } from "../../runtime/replay/trace.ts";

const example = readFileSync(
  new URL("../../../shared/traces/example-dma-read.trace.jsonl", import.meta.url),
  "utf8",
);

/** The shared DMA-read example, moved to LBA 0x8000 (far from where the background copy starts). */
function farReadTrace(extra: object[]): string {
  const lines = example
    .trim()
    .split("\n")
    .map((l) =>
      l.replace('"hex": "2780250040000040', '"hex": "2780250000800040').replace('"lba": 64', '"lba": 32768'),
    );
  return [...lines, ...extra.map((o) => JSON.stringify(o))].join("\n");
}

describe("streaming deployment under a replayed guest", () => {
  it("redirects a read of missing blocks, copies the rest, de-virtualizes, and leaves the image on disk", async () => {
    const text = farReadTrace([
      { op: "finish", max_ms: 60000 },
      { op: "disk_expect", lba: 0, count: 65536, pattern: "lba" },
      { op: "mmio_read", addr: "0xfebf0138", size: 4, expect: "0x0" },
    ]);
    const trace = parseTrace(text, "far-read.trace.jsonl");
    // 32 MiB over 64 MiB/s: the guest's read comes long before the copy reaches LBA 0x8000.
    const env = await streamingEnvironment(trace, { linkBytesPerSecond: 64 * 1024 * 1024, latencyMs: 1 });
    try {
      const result = await replayTrace(trace, env);
      expect(result.failures).toEqual([]);
      const { engine, machine } = env;
      expect(engine.stats.redirectedReads).toBeGreaterThanOrEqual(1);
      expect(engine.stats.bytesRedirected).toBeGreaterThanOrEqual(2048);
      expect(engine.isDevirtualized).toBe(true);
      expect(machine.host.on).toBe(false);
      expect(machine.host.stats.exitsAfterOff).toBe(0);
      // After de-virtualization the guest's accesses go straight to the device.
      const exits = machine.host.stats.exits;
      const direct = machine.region.stats.directReads;
      machine.mmioRead(0xfebf0138, 4);
      expect(machine.host.stats.exits).toBe(exits);
      expect(machine.region.stats.directReads).toBe(direct + 1);
      // The local disk itself (not the engine's view) holds the whole image.
      const disk = await env.local.read(0, 65536);
      expect(checkLbaPattern(disk, 0)).toBe(-1);
    } finally {
      await env.close();
    }
  });

  it("keeps a guest write made during streaming over the image data", async () => {
    // WRITE DMA EXT of 8 sectors at LBA 0x8000 from a 0xAB-filled buffer, then finish.
    const fis = "27803500" + "00800040" + "00000000" + "08000000" + "00000000";
    const table = `${fis.padEnd(256, "0")}000008000000000000000000ff0f0000`;
    const lines = example.trim().split("\n");
    const init = lines.slice(
      0,
      lines.findIndex((l) => l.includes('"mem_write"')),
    );
    const ops = [
      { op: "mem_fill", addr: "0x80000", len: 4096, byte: "0xab" },
      { op: "mem_write", addr: "0x41000", hex: table },
      {
        op: "mem_write",
        addr: "0x40000",
        hex: "4500010000000000001004000000000000000000000000000000000000000000",
      },
      { op: "mmio_write", addr: "0xfebf0138", size: 4, value: "0x1" },
      { op: "poll", addr: "0xfebf0138", size: 4, mask: "0x1", value: "0x0" },
      { op: "mmio_read", addr: "0xfebf0120", size: 4, expect: "0x0", mask: "0x1" },
      { op: "finish" },
      { op: "disk_expect", lba: 32768, count: 8, sha256: sha(new Uint8Array(4096).fill(0xab)) },
      { op: "disk_expect", lba: 32776, count: 120, pattern: "lba" },
    ];
    const trace = parseTrace([...init, ...ops.map((o) => JSON.stringify(o))].join("\n"), "write.trace.jsonl");
    const env = await streamingEnvironment(trace, { linkBytesPerSecond: 64 * 1024 * 1024, latencyMs: 1 });
    try {
      const result = await replayTrace(trace, env);
      expect(result.failures).toEqual([]);
      const checks = trace.ops.filter(
        (o) =>
          ["poll", "mem_expect", "irq", "disk_expect"].includes(o.op) ||
          (o.op === "mmio_read" && o.expect !== null),
      );
      expect(result.passed).toBe(checks.length);
      expect(env.engine.stats.deferredCommands).toBeGreaterThanOrEqual(1); // partial block: fetch and merge first
      const onDisk = await env.local.read(32768, 8);
      expect(onDisk.every((b) => b === 0xab)).toBe(true);
    } finally {
      await env.close();
    }
  });
});

function sha(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

describe("stopping the engine", () => {
  it("with fetched blocks still waiting for their local write: the writer stops at once (no call after call)", async () => {
    const { VirtualClock } = await import("../../runtime/vmx/clock.ts");
    const { streamingSetup } = await import("./helpers.ts");
    const clock = new VirtualClock();
    // A slow local disk: the fetched blocks queue up in the engine's cache.
    const s = streamingSetup({ sectors: (64 << 20) / 512, clock, blockBytes: 65536, deviceLatencyMs: 20 });
    const engine = s.engine as unknown as { writer(): Promise<void> };
    const writer = engine.writer.bind(engine);
    let calls = 0;
    engine.writer = () => {
      calls++;
      return writer();
    };
    s.engine.start();
    await clock.sleep(50);
    expect(s.engine.stats.bytesFetched).toBeGreaterThan(s.engine.stats.bytesWrittenLocal);
    calls = 0;
    s.engine.stop();
    await clock.sleep(200);
    // Before the fix, a stopped writer with blocks queued called itself until the stack overflowed.
    expect(calls).toBeLessThan(10);
    expect(s.engine.error).toBeNull();
  });
});

describe("progress on a slow link", () => {
  it("what the copy has written counts as local within about a second, not only every 64 MiB", async () => {
    const { VirtualClock } = await import("../../runtime/vmx/clock.ts");
    const { streamingSetup } = await import("./helpers.ts");
    const clock = new VirtualClock();
    // 16 MiB at 1 MiB/s: background fetches are always on the link, so the copy never pauses.
    const s = streamingSetup({
      sectors: (16 << 20) / 512,
      clock,
      blockBytes: 65536,
      linkBytesPerSecond: 1 << 20,
    });
    await clock.run(async () => {
      s.engine.start();
      await clock.sleep(4000);
      // About 4 MiB fetched by now; all but the last second's worth must be durable and counted.
      expect(s.engine.stats.bytesFetched).toBeGreaterThanOrEqual(3 << 20);
      expect(s.engine.localBytes).toBeGreaterThanOrEqual(2 << 20);
      s.engine.stop();
    });
  });
});

describe("the background rate limit and an idle guest", () => {
  const MiB = 1 << 20;
  // 32 MiB over an 8 MiB/s link with the copy limited to 1 MiB/s: what it copies from 1 s to 3 s
  // (after the first fetches, sent before a busy guest's first command).
  async function copiedFrom1To3s(
    fullRateWhenIdleMs: number | undefined,
    busyGuest: boolean,
  ): Promise<number> {
    const { VirtualClock } = await import("../../runtime/vmx/clock.ts");
    const { streamingSetup } = await import("./helpers.ts");
    const { AhciGuestDriver } = await import("../../runtime/guest/driver.ts");
    const clock = new VirtualClock();
    const s = streamingSetup({
      sectors: (32 * MiB) / 512,
      clock,
      blockBytes: 65536,
      linkBytesPerSecond: 8 * MiB,
      backgroundRate: MiB,
      fullRateWhenIdleMs,
    });
    let bytes = 0;
    await clock.run(async () => {
      const driver = await AhciGuestDriver.open(s.machine);
      const start = clock.now();
      s.engine.start();
      let atOne: number | null = null;
      while (clock.now() < start + 3000) {
        if (atOne === null && clock.now() >= start + 1000) atOne = s.engine.stats.bytesBackground;
        // A busy guest reads the first block every 20 ms (local after the first miss).
        if (busyGuest) await driver.read(0, 8);
        await clock.sleep(20);
      }
      bytes = s.engine.stats.bytesBackground - atOne!;
      s.engine.stop();
    });
    return bytes;
  }

  it("holds while the guest is busy, and is lifted while it is idle when asked", async () => {
    // 2 s at the limit: about 2 MiB (a fetch or two may run ahead of it).
    expect(await copiedFrom1To3s(undefined, false)).toBeLessThanOrEqual(3.5 * MiB);
    expect(await copiedFrom1To3s(500, true)).toBeLessThanOrEqual(3.5 * MiB);
    // An idle guest and the limit lifted: 2 s at the link's 8 MiB/s.
    expect(await copiedFrom1To3s(500, false)).toBeGreaterThanOrEqual(12 * MiB);
  });
});
