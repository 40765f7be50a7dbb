import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../runtime/vmx/clock.ts";

const realDelay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe("VirtualClock", () => {
  it("advances exactly to each timer and never backwards", async () => {
    const clock = new VirtualClock();
    expect(clock.virtual).toBe(true);
    expect(clock.now()).toBe(0);
    await clock.sleep(250);
    expect(clock.now()).toBe(250);
    await clock.sleep(0.5);
    expect(clock.now()).toBe(250.5);
    await clock.sleep(-3);
    await clock.sleep(Number.NaN);
    expect(clock.now()).toBe(250.5);
    const late = new VirtualClock({ start: 1000 });
    await late.sleep(1);
    expect(late.now()).toBe(1001);
  });

  it("runs a long scenario in virtual time, not real time", async () => {
    const clock = new VirtualClock();
    const started = performance.now();
    await clock.run(async () => {
      await clock.sleep(3_600_000);
    });
    expect(clock.now()).toBe(3_600_000);
    expect(performance.now() - started).toBeLessThan(500);
  });

  it("fires timers in time order and same-time timers in FIFO order", async () => {
    const clock = new VirtualClock();
    const log: string[] = [];
    const at = (name: string, ms: number) => clock.sleep(ms).then(() => log.push(`${name}@${clock.now()}`));
    await Promise.all([at("c", 30), at("a", 10), at("b1", 20), at("b2", 20), at("z", 0), at("b3", 20)]);
    expect(log).toEqual(["z@0", "a@10", "b1@20", "b2@20", "b3@20", "c@30"]);
  });

  it("orders a sleep scheduled at the current time after earlier ones due then", async () => {
    const clock = new VirtualClock();
    const log: string[] = [];
    await Promise.all([
      clock.sleep(10).then(async () => {
        log.push("first");
        await clock.sleep(0);
        log.push("first again");
      }),
      clock.sleep(10).then(() => log.push("second")),
      clock.sleep(11).then(() => log.push("later")),
    ]);
    expect(log).toEqual(["first", "second", "first again", "later"]);
  });

  it("wakes many concurrent sleepers each at its own time", async () => {
    const clock = new VirtualClock();
    const n = 20_000;
    let state = 12345;
    const rand = () => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return state % 100_000;
    };
    const wanted = Array.from({ length: n }, rand);
    const woke = new Array<number>(n);
    const order: number[] = [];
    await Promise.all(
      wanted.map((ms, i) =>
        clock.sleep(ms).then(() => {
          woke[i] = clock.now();
          order.push(i);
        }),
      ),
    );
    expect(woke).toEqual(wanted);
    const sorted = [...order].sort((a, b) => wanted[a]! - wanted[b]! || a - b);
    expect(order).toEqual(sorted);
    expect(clock.pendingTimers).toBe(0);
  });

  it("lets microtask chains and a setImmediate hop schedule before time moves", async () => {
    const clock = new VirtualClock();
    const log: string[] = [];
    const slow = clock.sleep(10).then(() => log.push(`slow@${clock.now()}`));
    // A long promise chain, then a setImmediate, then a sleep that is due first.
    let p = Promise.resolve();
    for (let i = 0; i < 1000; i++) p = p.then(() => undefined);
    await p;
    await new Promise((r) => setImmediate(r));
    await clock.sleep(5);
    log.push(`quick@${clock.now()}`);
    await slow;
    expect(log).toEqual(["quick@5", "slow@10"]);
  });

  it("waits for short setImmediate chains after a wake-up before moving on", async () => {
    const clock = new VirtualClock();
    const hop = () => new Promise((r) => setImmediate(r));
    const log: string[] = [];
    const other = clock.sleep(10.5).then(() => log.push(`other@${clock.now()}`));
    await clock.sleep(10);
    await hop();
    await hop();
    // Still "at" 10: this sleep must not start from 10.5.
    await clock.sleep(1);
    log.push(`me@${clock.now()}`);
    await other;
    expect(log).toEqual(["other@10.5", "me@11"]);
  });

  it("holds time while tracked real I/O is in flight", async () => {
    const clock = new VirtualClock();
    const log: string[] = [];
    const timer = clock.sleep(1000).then(() => log.push(`timer@${clock.now()}`));
    await clock.track(realDelay(30));
    log.push(`io done@${clock.now()}`);
    // Work that follows the I/O still comes before the timer.
    await clock.sleep(1);
    log.push(`after io@${clock.now()}`);
    await timer;
    expect(log).toEqual(["io done@0", "after io@1", "timer@1000"]);
    expect(clock.pendingTracked).toBe(0);
  });

  it("lets time run ahead of untracked real I/O (why track exists)", async () => {
    const clock = new VirtualClock();
    void clock.sleep(1000);
    await realDelay(30);
    expect(clock.now()).toBe(1000);
  });

  it("counts tracked work that fails as finished and passes the rejection on", async () => {
    const clock = new VirtualClock();
    const failing = clock.track(realDelay(5).then(() => Promise.reject(new Error("boom"))));
    expect(clock.pendingTracked).toBe(1);
    await expect(failing).rejects.toThrow("boom");
    expect(clock.pendingTracked).toBe(0);
    await clock.sleep(7);
    expect(clock.now()).toBe(7);
  });

  it("replays a scenario with identical virtual times", async () => {
    const scenario = async () => {
      const clock = new VirtualClock();
      const log: string[] = [];
      const worker = async (id: number) => {
        let x = id + 1;
        for (let i = 0; i < 50; i++) {
          x = (x * 48271) % 2147483647;
          await clock.sleep((x % 7) * 1.5);
          if (x % 3 === 0) await Promise.resolve();
          if (x % 5 === 0) await new Promise((r) => setImmediate(r));
          log.push(`${id}:${i}@${clock.now()}`);
        }
      };
      await clock.run(() => Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(worker)));
      return log;
    };
    const first = await scenario();
    expect(first).toHaveLength(400);
    expect(await scenario()).toEqual(first);
  });

  it("simulates a million milliseconds of busy workers in well under a second", async () => {
    const clock = new VirtualClock();
    const started = performance.now();
    let wakeups = 0;
    await clock.run(() =>
      Promise.all(
        Array.from({ length: 20 }, async (_, w) => {
          while (clock.now() < 1_000_000) {
            await clock.sleep(900 + 7 * w);
            wakeups++;
          }
        }),
      ),
    );
    const elapsed = performance.now() - started;
    expect(clock.now()).toBeGreaterThanOrEqual(1_000_000);
    expect(wakeups).toBeGreaterThan(20_000);
    expect(elapsed).toBeLessThan(1000);
  });

  it("returns the scenario's result from run() and propagates its failure", async () => {
    const clock = new VirtualClock();
    const result = await clock.run(async () => {
      await clock.sleep(5);
      return clock.now();
    });
    expect(result).toBe(5);
    await expect(
      clock.run(async () => {
        await clock.sleep(1);
        throw new Error("scenario failed");
      }),
    ).rejects.toThrow("scenario failed");
  });

  it("rejects an infinite sleep instead of stalling", async () => {
    const clock = new VirtualClock();
    await expect(clock.sleep(Number.POSITIVE_INFINITY)).rejects.toThrow(RangeError);
    expect(clock.pendingTimers).toBe(0);
  });

  it("does not keep the process alive once no timer is pending", async () => {
    const dir = await mkdtemp(join(tmpdir(), "medic-clock-"));
    try {
      const script = join(dir, "idle.mts");
      const clockPath = resolve(import.meta.dirname, "../../runtime/vmx/clock.ts");
      await writeFile(
        script,
        `import { VirtualClock } from ${JSON.stringify(clockPath)};
const clock = new VirtualClock();
await clock.sleep(10);
await Promise.all([clock.sleep(5), clock.sleep(50)]);
console.log("done", clock.now());
`,
      );
      const tsx = resolve(import.meta.dirname, "../../node_modules/tsx/dist/esm/index.mjs");
      const child = spawn(process.execPath, ["--import", tsx, script], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.stderr.on("data", (d) => {
        out += d;
      });
      const code = await new Promise<number | null | "hung">((done) => {
        const guard = setTimeout(() => {
          child.kill();
          done("hung");
        }, 15_000);
        child.on("exit", (c) => {
          clearTimeout(guard);
          done(c);
        });
      });
      expect(out.trim()).toBe("done 60");
      expect(code).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
