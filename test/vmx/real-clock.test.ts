import { describe, expect, it } from "vitest";
import { RealClock, trackIo, VirtualClock } from "../../runtime/vmx/clock.ts";

describe("RealClock", () => {
  it("counts milliseconds from its creation", async () => {
    const clock = new RealClock();
    expect(clock.virtual).toBe(false);
    const t0 = clock.now();
    expect(t0).toBeGreaterThanOrEqual(0);
    expect(t0).toBeLessThan(50);
    await new Promise((r) => setTimeout(r, 20));
    expect(clock.now() - t0).toBeGreaterThanOrEqual(19);
  });

  it("never wakes early", async () => {
    const clock = new RealClock();
    for (const ms of [0.3, 1, 2.5, 15]) {
      const start = clock.now();
      await clock.sleep(ms);
      expect(clock.now() - start).toBeGreaterThanOrEqual(ms);
    }
  });

  it("makes tiny sleeps cheap instead of costing a millisecond each", async () => {
    const clock = new RealClock();
    const start = performance.now();
    for (let i = 0; i < 2000; i++) await clock.sleep(0);
    for (let i = 0; i < 200; i++) await clock.sleep(0.01);
    // With setTimeout each would take >= 1 ms: 2.2 s in total.
    expect(performance.now() - start).toBeLessThan(500);
  });

  it("resolves sleep(0) asynchronously", async () => {
    const clock = new RealClock();
    let done = false;
    const p = clock.sleep(0).then(() => {
      done = true;
    });
    await Promise.resolve();
    expect(done).toBe(false);
    await p;
    expect(done).toBe(true);
  });
});

describe("trackIo", () => {
  it("tracks on a virtual clock and is the identity elsewhere", async () => {
    const virtual = new VirtualClock();
    const work = new Promise<number>((r) => setTimeout(() => r(7), 5));
    expect(trackIo(virtual, work)).toBe(work);
    expect(virtual.pendingTracked).toBe(1);
    expect(await work).toBe(7);
    await Promise.resolve();
    expect(virtual.pendingTracked).toBe(0);
    const other = Promise.resolve(1);
    expect(trackIo(new RealClock(), other)).toBe(other);
    expect(trackIo(undefined, other)).toBe(other);
  });
});
