import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import {
  type AccessSize,
  HANDLED,
  type MmioDevice,
  type MmioExit,
  VmxError,
  VmxHost,
} from "../../runtime/vmx/host.ts";
import { GuestMemory } from "../../runtime/vmx/memory.ts";

/** 16 little-endian dword registers that log every access the device itself sees. */
class Registers implements MmioDevice {
  readonly regs = new Uint32Array(16);
  readonly log: string[] = [];
  onWrite: ((offset: number, value: number) => void) | undefined;

  read(offset: number, size: AccessSize): number {
    this.log.push(`r${size}@${offset}`);
    const shift = (offset & 3) * 8;
    return this.regs[offset >> 2]! >>> shift;
  }

  write(offset: number, size: AccessSize, value: number): void {
    this.log.push(`w${size}@${offset}=${value.toString(16)}`);
    if (size === 4) this.regs[offset >> 2] = value;
    else {
      const shift = (offset & 3) * 8;
      const mask = (size === 1 ? 0xff : 0xffff) << shift;
      this.regs[offset >> 2] = (this.regs[offset >> 2]! & ~mask) | ((value << shift) & mask);
    }
    this.onWrite?.(offset, value);
  }
}

const BASE = 0xfebf_0000;

function setup(trapped: boolean, clock = new VirtualClock()) {
  const host = new VmxHost({ memory: new GuestMemory({ ramBytes: 1 << 20, vmmBytes: 1 << 16 }), clock });
  const device = new Registers();
  const region = host.addMmio({ name: "abar", base: BASE, size: 64, device, trapped });
  return { host, device, region, clock };
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error("expected a throw");
}

describe("VmxHost MMIO", () => {
  it("sends untrapped accesses straight to the device without exits", () => {
    const { host, device, region } = setup(false);
    host.mmioWrite(BASE + 4, 4, 0xdeadbeef);
    expect(host.mmioRead(BASE + 4, 4)).toBe(0xdeadbeef);
    expect(host.mmioRead(BASE + 5, 1)).toBe(0xbe);
    expect(device.log).toEqual(["w4@4=deadbeef", "r4@4", "r1@5"]);
    expect(host.stats.exits).toBe(0);
    expect(host.stats.directAccesses).toBe(3);
    expect(region.stats).toEqual({ exitReads: 0, exitWrites: 0, directReads: 2, directWrites: 1 });
  });

  it("counts a trapped access without handler as an exit and still reaches the device", () => {
    const { host, device, region } = setup(true);
    host.mmioWrite(BASE + 8, 4, 7);
    expect(host.mmioRead(BASE + 8, 4)).toBe(7);
    expect(device.log).toEqual(["w4@8=7", "r4@8"]);
    expect(host.stats.exits).toBe(2);
    expect(host.stats.exitsByReason["ept-violation"]).toBe(2);
    expect(host.stats.directAccesses).toBe(0);
    expect(region.stats).toEqual({ exitReads: 1, exitWrites: 1, directReads: 0, directWrites: 0 });
  });

  it("hands the exit to the region's handler with the access qualification", () => {
    const { host, device, region } = setup(true);
    const seen: unknown[] = [];
    region.handler = (exit: MmioExit, dev) => {
      expect(dev).toBe(device);
      expect(exit.region).toBe(region);
      seen.push({ ...exit.qualification, reason: exit.reason });
      const q = exit.qualification;
      if (q.offset === 0) return q.write ? HANDLED : 0x1234; // emulated register
      if (q.offset === 4 && q.write) {
        dev.write(q.offset, q.size, q.value | 0x100); // modified on the way through
        return HANDLED;
      }
      return undefined; // pass through
    };
    expect(host.mmioRead(BASE, 4)).toBe(0x1234);
    host.mmioWrite(BASE, 4, 99);
    host.mmioWrite(BASE + 4, 2, 0x1_0001); // masked to the access size
    host.mmioWrite(BASE + 12, 1, 0x5);
    expect(host.mmioRead(BASE + 12, 1)).toBe(5);
    expect(device.log).toEqual(["w2@4=101", "w1@12=5", "r1@12"]);
    expect(seen).toEqual([
      { reason: "ept-violation", addr: BASE, offset: 0, size: 4, write: false, value: 0 },
      { reason: "ept-violation", addr: BASE, offset: 0, size: 4, write: true, value: 99 },
      { reason: "ept-violation", addr: BASE + 4, offset: 4, size: 2, write: true, value: 1 },
      { reason: "ept-violation", addr: BASE + 12, offset: 12, size: 1, write: true, value: 5 },
      { reason: "ept-violation", addr: BASE + 12, offset: 12, size: 1, write: false, value: 0 },
    ]);
    expect(host.stats.exits).toBe(5);
  });

  it("masks values to the access size in both directions", () => {
    const { host, region } = setup(true);
    region.handler = (exit) => (exit.qualification.write ? undefined : -1);
    expect(host.mmioRead(BASE, 1)).toBe(0xff);
    expect(host.mmioRead(BASE, 2)).toBe(0xffff);
    expect(host.mmioRead(BASE, 4)).toBe(0xffff_ffff);
  });

  it("switches trapping per region, as EPT entries do", () => {
    const { host, device, region } = setup(true);
    const other = host.addMmio({
      name: "other",
      base: BASE + 0x1000,
      size: 16,
      device: new Registers(),
      trapped: true,
    });
    host.mmioRead(BASE, 4);
    host.setTrapped(region, false);
    expect(region.trapped).toBe(false);
    host.mmioRead(BASE, 4);
    host.mmioRead(BASE + 0x1000, 4);
    expect(host.stats.exits).toBe(2);
    expect(host.stats.directAccesses).toBe(1);
    host.setTrapped(region, true);
    host.mmioRead(BASE, 4);
    expect(host.stats.exits).toBe(3);
    host.dropTraps(other);
    expect(other.trapped).toBe(false);
    expect(region.trapped).toBe(true);
    host.dropTraps();
    expect(region.trapped).toBe(false);
    host.mmioRead(BASE, 4);
    host.mmioRead(BASE + 0x1000, 4);
    expect(host.stats.exits).toBe(3);
    expect(device.log).toHaveLength(4);
    expect(host.region("other")).toBe(other);
    expect(host.regions).toHaveLength(2);
  });

  it("splits 8-byte accesses into low then high dwords", () => {
    const { host, device, region } = setup(true);
    const exits: string[] = [];
    region.handler = (exit) => {
      exits.push(`${exit.qualification.write ? "w" : "r"}@${exit.qualification.offset}`);
      return undefined;
    };
    host.mmioWrite(BASE + 8, 8, 0x1122_3344_5566_7788n);
    expect(device.regs[2]).toBe(0x5566_7788);
    expect(device.regs[3]).toBe(0x1122_3344);
    expect(host.mmioRead(BASE + 8, 8)).toBe(0x1122_3344_5566_7788n);
    host.mmioWrite(BASE + 16, 8, 2 ** 40 + 5);
    expect([device.regs[4], device.regs[5]]).toEqual([5, 256]);
    expect(exits).toEqual(["w@8", "w@12", "r@8", "r@12", "w@16", "w@20"]);
    expect(device.log.slice(0, 4)).toEqual(["w4@8=55667788", "w4@12=11223344", "r4@8", "r4@12"]);
    expect(host.stats.exits).toBe(6);
  });

  it("rejects accesses that hit no region, cross its end or have odd sizes", () => {
    const { host } = setup(false);
    expect((thrown(() => host.mmioRead(BASE - 4, 4)) as VmxError).code).toBe("unmapped");
    expect((thrown(() => host.mmioRead(BASE + 64, 4)) as VmxError).code).toBe("unmapped");
    expect((thrown(() => host.mmioRead(BASE + 62, 4)) as VmxError).code).toBe("range");
    // An 8-byte access is two accesses: the low one happens, the high one misses.
    expect((thrown(() => host.mmioRead(BASE + 60, 8)) as VmxError).code).toBe("unmapped");
    expect((thrown(() => host.mmioRead(BASE, 3 as AccessSize)) as VmxError).code).toBe("size");
  });

  it("refuses overlapping or duplicate regions", () => {
    const { host } = setup(false);
    const device = new Registers();
    const add = (name: string, base: number, size: number) => () =>
      host.addMmio({ name, base, size, device, trapped: false });
    expect((thrown(add("x", BASE + 60, 16)) as VmxError).code).toBe("overlap");
    expect((thrown(add("x", BASE - 8, 9)) as VmxError).code).toBe("overlap");
    expect((thrown(add("abar", BASE + 0x1000, 16)) as VmxError).code).toBe("overlap");
    expect((thrown(add("x", BASE + 0x1000, 0)) as VmxError).code).toBe("range");
    expect(() => add("y", BASE + 64, 16)()).not.toThrow();
  });

  it("refuses a guest access from inside an exit handler", () => {
    const { host, region } = setup(true);
    region.handler = () => host.mmioRead(BASE + 4, 4);
    expect((thrown(() => host.mmioRead(BASE, 4)) as VmxError).code).toBe("nested");
    region.handler = undefined;
    expect(host.mmioRead(BASE, 4)).toBe(0); // the host recovered
  });

  it("accounts time spent in exit handlers", () => {
    const { host, region } = setup(true);
    region.handler = () => {
      const until = performance.now() + 2;
      while (performance.now() < until) {}
      return 0;
    };
    host.mmioRead(BASE, 4);
    expect(host.stats.exitTimeMs).toBeGreaterThanOrEqual(2);
  });

  it("estimates exit time from a random sample of exits when asked, and counts every exit", () => {
    const { host, region } = setup(true);
    const spin = (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until) {}
    };
    region.handler = () => {
      spin(0.02);
      return 0;
    };
    host.exitTimingInterval = 4;
    for (let i = 0; i < 2000; i++) host.mmioRead(BASE, 4);
    expect(host.stats.exits).toBe(2000);
    const exact = 2000 * 0.02;
    expect(host.stats.exitTimeMs).toBeGreaterThan(exact * 0.5);
    expect(host.stats.exitTimeMs).toBeLessThan(exact * 20);
    host.exitTimingInterval = 1;
    const before = host.stats.exitTimeMs;
    host.mmioRead(BASE, 4);
    expect(host.stats.exitTimeMs - before).toBeGreaterThanOrEqual(0.02); // exact again
  });

  it("samples about one exit in exitTimingInterval", () => {
    const { host } = setup(true);
    host.exitTimingInterval = 8;
    const now = performance.now.bind(performance);
    let calls = 0;
    performance.now = () => {
      calls++;
      return now();
    };
    try {
      for (let i = 0; i < 8000; i++) host.mmioRead(BASE, 4);
    } finally {
      performance.now = now;
    }
    // Two calls per timed exit: about 2 * 8000 / 8.
    expect(calls).toBeGreaterThan(1500);
    expect(calls).toBeLessThan(2500);
  });
});

describe("VmxHost interrupts", () => {
  it("passes the device line through as exits while on and no filter is set", () => {
    const { host } = setup(false);
    const levels: boolean[] = [];
    host.onGuestIrq((l) => levels.push(l));
    host.deviceIrq.set(true);
    host.deviceIrq.set(true); // no edge, no exit
    expect(host.guestIrqPending).toBe(true);
    host.deviceIrq.set(false);
    expect(levels).toEqual([true, false]);
    expect(host.stats.exitsByReason["external-interrupt"]).toBe(2);
  });

  it("lets the mediator hold an interrupt back and inject it later", () => {
    const { host } = setup(false);
    const levels: boolean[] = [];
    const unsubscribe = host.onGuestIrq((l) => levels.push(l));
    const seen: boolean[] = [];
    host.setIrqFilter((exit) => {
      seen.push(exit.qualification.level);
      return false; // hold back
    });
    host.deviceIrq.set(true);
    expect(host.deviceIrq.level).toBe(true);
    expect(host.guestIrqPending).toBe(false);
    expect(levels).toEqual([]);
    host.setGuestIrq(true);
    expect(host.guestIrqPending).toBe(true);
    host.setGuestIrq(false);
    unsubscribe();
    host.setGuestIrq(true);
    expect(levels).toEqual([true, false]);
    expect(seen).toEqual([true]);
  });

  it("delivers an interrupt raised inside an MMIO exit only after that exit", () => {
    const { host, device, region } = setup(true);
    const order: string[] = [];
    let inMmio = false;
    region.handler = (exit, dev) => {
      inMmio = true;
      dev.write(exit.qualification.offset, exit.qualification.size, exit.qualification.value);
      order.push("mmio done");
      inMmio = false;
      return HANDLED;
    };
    device.onWrite = (offset, value) => {
      if (offset === 0x10) host.deviceIrq.set(value !== 0);
    };
    host.setIrqFilter((exit) => {
      expect(inMmio).toBe(false);
      order.push(`irq ${exit.qualification.level}`);
      return undefined;
    });
    host.mmioWrite(BASE + 0x10, 4, 1);
    expect(order).toEqual(["mmio done", "irq true"]);
    expect(host.guestIrqPending).toBe(true);
    expect(host.stats.exitsByReason).toEqual({ "ept-violation": 1, "external-interrupt": 1 });
    // Raised and lowered within one exit: nothing to deliver.
    device.onWrite = () => {
      host.deviceIrq.set(false);
      host.deviceIrq.set(true);
    };
    host.mmioWrite(BASE + 0x14, 4, 1);
    expect(host.stats.exitsByReason["external-interrupt"]).toBe(1);
  });
});

describe("VmxHost de-virtualization", () => {
  it("turns off for good: no exit of any kind afterwards", async () => {
    const { host, device, region, clock } = setup(true);
    const levels: boolean[] = [];
    host.onGuestIrq((l) => levels.push(l));
    host.setIrqFilter(() => false);
    host.mmioRead(BASE, 4);
    host.deviceIrq.set(true); // held back
    const exitsBefore = host.stats.exits;
    await clock.sleep(1234);
    host.turnOff();
    expect(host.on).toBe(false);
    expect(host.turnedOffAt).toBe(1234);
    expect(region.trapped).toBe(false);
    expect(host.guestIrqPending).toBe(true); // the held-back interrupt now shows
    expect(levels).toEqual([true]);
    for (let i = 0; i < 100; i++) {
      host.mmioWrite(BASE + 4, 4, i);
      host.mmioRead(BASE + 4, 8);
      host.deviceIrq.set(i % 2 !== 0);
    }
    expect(host.stats.exits).toBe(exitsBefore);
    expect(host.stats.exitsAfterOff).toBe(0);
    expect(host.guestIrqPending).toBe(host.deviceIrq.level);
    expect(levels).toHaveLength(101);
    expect(device.log.length).toBe(1 + 300);
    expect(host.stats.directAccesses).toBe(300);
    host.turnOff();
    expect(host.turnedOffAt).toBe(1234);
  });

  it("refuses to trap, filter or inject after turnOff", () => {
    const { host, region } = setup(false);
    host.turnOff();
    expect((thrown(() => host.setTrapped(region, true)) as VmxError).code).toBe("state");
    expect((thrown(() => host.setGuestIrq(true)) as VmxError).code).toBe("state");
    expect((thrown(() => host.setIrqFilter(() => true)) as VmxError).code).toBe("state");
    const add = () =>
      host.addMmio({ name: "late", base: 0, size: 4, device: new Registers(), trapped: true });
    expect((thrown(add) as VmxError).code).toBe("state");
    host.setTrapped(region, false);
    expect(host.stats.exitsAfterOff).toBe(0);
  });

  it("treats an exit after turnOff as an internal error and counts it", () => {
    const { host, region } = setup(true);
    host.turnOff();
    // Simulate a bug that left the trap in place.
    (region as unknown as { _trapped: boolean })._trapped = true;
    const error = thrown(() => host.mmioRead(BASE, 4)) as VmxError;
    expect(error).toBeInstanceOf(VmxError);
    expect(error.code).toBe("internal");
    expect(host.stats.exitsAfterOff).toBe(1);
  });

  it("uses a real clock by default", () => {
    const host = new VmxHost({ memory: new GuestMemory({ ramBytes: 4096 }) });
    expect(host.clock.virtual).toBe(false);
    host.turnOff();
    expect(host.turnedOffAt).toBeGreaterThanOrEqual(0);
  });
});

describe("VmxHost performance", () => {
  it("handles millions of untrapped and hundreds of thousands of trapped accesses per second", () => {
    const host = new VmxHost({ memory: new GuestMemory({ ramBytes: 4096 }) });
    const regs = new Uint32Array(16);
    const device: MmioDevice = {
      read: (offset) => regs[offset >> 2]!,
      write: (offset, _size, value) => {
        regs[offset >> 2] = value;
      },
    };
    const region = host.addMmio({ name: "fast", base: BASE, size: 64, device, trapped: false });
    const n = 1_000_000;
    let start = performance.now();
    let sum = 0;
    for (let i = 0; i < n; i++) {
      host.mmioWrite(BASE + 8, 4, i);
      sum += host.mmioRead(BASE + 8, 4);
    }
    const direct = performance.now() - start;
    expect(sum).toBe(((n - 1) * n) / 2);
    host.setTrapped(region, true);
    region.handler = (exit) => (exit.qualification.write ? undefined : exit.qualification.offset);
    start = performance.now();
    for (let i = 0; i < n / 4; i++) {
      host.mmioWrite(BASE + 8, 4, i);
      sum += host.mmioRead(BASE + 8, 4);
    }
    const trapped = performance.now() - start;
    expect(host.stats.exits).toBe(n / 2);
    expect(sum).toBe(((n - 1) * n) / 2 + (8 * n) / 4);
    // 2M direct accesses and 500k exits, each well under a second (about 10x headroom here);
    // 100k IOPS needs only a handful of accesses per I/O.
    expect(direct).toBeLessThan(1000);
    expect(trapped).toBeLessThan(1000);
  });
});
