import { describe, expect, it } from "vitest";
import { MemoryBackend } from "../../runtime/block/memory.ts";
import { checkLbaPattern, PatternSource } from "../../runtime/block/pattern.ts";
import { Link, megabits, ThrottledBackend, ThrottledSource } from "../../runtime/block/throttle.ts";
import { BlockError, SECTOR_SIZE } from "../../runtime/block/types.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { expectBlockError, expectBytes, sectorsOf } from "./contract.ts";

const MiB = 2 ** 20;
const sectorsIn = (bytes: number) => bytes / SECTOR_SIZE;

describe("ThrottledSource", () => {
  it("takes exactly size / bandwidth for one large request", async () => {
    const clock = new VirtualClock();
    const source = new ThrottledSource(new PatternSource(1 << 20), { clock, bandwidth: megabits(8) });
    const data = await source.read(0, sectorsIn(10 * MiB));
    expect(checkLbaPattern(data, 0)).toBe(-1);
    expect(clock.now()).toBeCloseTo(((10485760 * 8) / 8e6) * 1000, 9);
  });

  it("shares the link between concurrent requests, serially", async () => {
    const clock = new VirtualClock();
    const source = new ThrottledSource(new PatternSource(1 << 20), { clock, bandwidth: megabits(8) });
    const done: number[] = [];
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        source.read(i * sectorsIn(MiB), sectorsIn(MiB)).then(() => done.push(clock.now())),
      ),
    );
    const perMiB = (MiB * 8 * 1000) / 8e6;
    done.forEach((t, i) => {
      expect(t).toBeCloseTo((i + 1) * perMiB, 6);
    });
    expect(clock.now()).toBeCloseTo(10 * perMiB, 6);
  });

  it("overlaps the latency of concurrent requests but not of sequential ones", async () => {
    const clock = new VirtualClock();
    const source = new ThrottledSource(new PatternSource(1000), {
      clock,
      bandwidth: Number.POSITIVE_INFINITY,
      latency: 50,
    });
    await Promise.all([source.read(0, 1), source.read(1, 1), source.read(2, 1), source.read(3, 1)]);
    expect(clock.now()).toBe(50);
    for (let i = 0; i < 4; i++) await source.read(i, 1);
    expect(clock.now()).toBe(250);
  });

  it("waits out the latency before the transfer, and an idle link banks no credit", async () => {
    const clock = new VirtualClock();
    const link = new Link({ clock, bandwidth: 512_000, latency: 10 }); // 1 sector per ms
    const source = new ThrottledSource(new PatternSource(100_000), link);
    const done: number[] = [];
    await Promise.all([
      source.read(0, 1000).then(() => done.push(clock.now())),
      source.read(1000, 1000).then(() => done.push(clock.now())),
    ]);
    expect(done).toEqual([1010, 2010]);
    await clock.sleep(5000);
    await source.read(0, 1000);
    expect(clock.now()).toBe(7010 + 10 + 1000);
    expect(source.stats).toMatchObject({ requests: 3, bytes: 3000 * SECTOR_SIZE, readRequests: 3 });
  });

  it("is no faster than the source behind it", async () => {
    const clock = new VirtualClock();
    const slow = new ThrottledSource(new PatternSource(100), {
      clock,
      bandwidth: Number.POSITIVE_INFINITY,
      latency: 500,
    });
    const fast = new ThrottledSource(slow, { clock, bandwidth: megabits(1000), latency: 1 });
    await fast.read(0, 1);
    expect(clock.now()).toBe(500);
    expect(fast.description).toContain("pattern lba");
  });

  it("rejects bad requests without occupying the link", async () => {
    const clock = new VirtualClock();
    const source = new ThrottledSource(new PatternSource(100), { clock, bandwidth: 1000 });
    await expectBlockError(source.read(99, 2), "range");
    expect(source.stats.requests).toBe(0);
    await source.read(0, 0);
    expect(clock.now()).toBe(0);
  });

  it("closes the inner source", async () => {
    const clock = new VirtualClock();
    const inner = new PatternSource(100);
    const source = new ThrottledSource(inner, { clock, bandwidth: 1000 });
    await source.close();
    await expectBlockError(inner.read(0, 1), "closed");
  });

  it("refuses nonsensical link parameters", () => {
    const clock = new VirtualClock();
    expect(() => new Link({ clock, bandwidth: 0 })).toThrow(BlockError);
    expect(() => new Link({ clock, bandwidth: Number.NaN })).toThrow(BlockError);
    expect(() => new Link({ clock, bandwidth: 1, latency: -1 })).toThrow(BlockError);
  });
});

describe("ThrottledSource.readInto", () => {
  it("takes the link time of read() and gives its bytes, with or without the inner readInto", async () => {
    for (const inner of [
      new PatternSource(1 << 20),
      // No readInto: the throttle falls back to the inner read().
      {
        sectors: 1 << 20,
        description: "plain",
        read: (l: number, c: number) => new PatternSource(1 << 20).read(l, c),
        close: async () => {},
      },
    ]) {
      const clock = new VirtualClock();
      const source = new ThrottledSource(inner, { clock, bandwidth: megabits(8), latency: 5 });
      const target = new Uint8Array(MiB + 3);
      await source.readInto(77, sectorsIn(MiB), target, 3);
      expect(checkLbaPattern(target.subarray(3), 77)).toBe(-1);
      expect(clock.now()).toBeCloseTo(5 + ((MiB * 8) / 8e6) * 1000, 9);
      expect(source.stats.readBytes).toBe(MiB);
    }
  });

  it("rejects bad requests before they occupy the link", async () => {
    const clock = new VirtualClock();
    const source = new ThrottledSource(new PatternSource(100), { clock, bandwidth: megabits(8) });
    await expectBlockError(source.readInto(99, 2, new Uint8Array(2 * SECTOR_SIZE)), "range");
    await expectBlockError(source.readInto(0, 2, new Uint8Array(SECTOR_SIZE)), "range");
    expect(source.stats.requests).toBe(0);
  });
});

describe("ThrottledBackend", () => {
  it("sends reads and writes over one shared link", async () => {
    const clock = new VirtualClock();
    const disk = new ThrottledBackend(new MemoryBackend(1 << 16), { clock, bandwidth: MiB });
    const done: string[] = [];
    await Promise.all([
      disk.write(0, sectorsOf(0, sectorsIn(MiB))).then(() => done.push(`write@${clock.now()}`)),
      disk.read(0, sectorsIn(MiB / 2)).then(() => done.push(`read@${clock.now()}`)),
    ]);
    expect(done).toEqual(["write@1000", "read@1500"]);
    expectBytes(await disk.read(0, 4), sectorsOf(0, 4));
    expect(disk.stats).toMatchObject({
      requests: 3,
      writeRequests: 1,
      writeBytes: MiB,
      readRequests: 2,
      readBytes: MiB / 2 + 4 * SECTOR_SIZE,
    });
    await disk.flush();
  });

  it("can leave writes unthrottled", async () => {
    const clock = new VirtualClock();
    const disk = new ThrottledBackend(
      new MemoryBackend(1 << 16),
      { clock, bandwidth: 1000 },
      { throttleWrites: false },
    );
    await disk.write(0, sectorsOf(0, 100));
    expect(clock.now()).toBe(0);
    expect(disk.stats.requests).toBe(0);
    expectBytes(await disk.read(0, 100), sectorsOf(0, 100));
    expect(clock.now()).toBeCloseTo(51_200, 9);
  });

  it("rejects partial-sector writes before they reach the link or the disk", async () => {
    const clock = new VirtualClock();
    const inner = new MemoryBackend(16);
    const disk = new ThrottledBackend(inner, { clock, bandwidth: 1000 });
    await expectBlockError(disk.write(0, new Uint8Array(10)), "range");
    await expectBlockError(disk.write(16, sectorsOf(16, 1)), "range");
    expect(disk.stats.requests).toBe(0);
  });
});
