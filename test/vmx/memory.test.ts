import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { GuestMemory, MemoryError } from "../../runtime/vmx/memory.ts";

const MiB = 2 ** 20;

describe("GuestMemory map", () => {
  it("hides the VMM's region at the top of RAM from the guest", () => {
    const memory = new GuestMemory({ ramBytes: 64 * MiB, vmmBytes: 8 * MiB });
    expect(memory.regions).toEqual([
      { base: 0, length: 56 * MiB, type: "ram" },
      { base: 56 * MiB, length: 8 * MiB, type: "reserved" },
    ]);
    expect(memory.vmmRegion).toEqual({ base: 56 * MiB, length: 8 * MiB, type: "reserved" });
    expect(memory.isGuestRange(0, 56 * MiB)).toBe(true);
    expect(memory.isGuestRange(56 * MiB - 4, 4)).toBe(true);
    expect(memory.isGuestRange(56 * MiB - 4, 8)).toBe(false);
    expect(memory.isGuestRange(60 * MiB, 4)).toBe(false);
    expect(memory.isPhysicalRange(60 * MiB, 4)).toBe(true);
    expect(memory.isPhysicalRange(64 * MiB - 4, 8)).toBe(false);
    expect(memory.isGuestRange(64 * MiB, 4)).toBe(false);
  });

  it("merges overlapping reservations and refuses ranges that span a hole", () => {
    const memory = new GuestMemory({
      ramBytes: 4 * MiB,
      vmmBytes: MiB,
      reserved: [
        { base: 0xa0000, length: 0x40000 },
        { base: 0xc0000, length: 0x40000 },
        { base: 0x10_0000, length: 0 },
      ],
    });
    expect(memory.regions).toEqual([
      { base: 0, length: 0xa0000, type: "ram" },
      { base: 0xa0000, length: 0x60000, type: "reserved" },
      { base: 0x10_0000, length: 2 * MiB, type: "ram" },
      { base: 3 * MiB, length: MiB, type: "reserved" },
    ]);
    expect(memory.isGuestRange(0x9f000, 0x1000)).toBe(true);
    expect(memory.isGuestRange(0x9f000, 0x2000)).toBe(false);
    expect(memory.isGuestRange(0x9f000, 0x70000)).toBe(false);
    expect(memory.isGuestRange(0x10_0000, 0)).toBe(true);
  });

  it("rejects malformed ranges instead of answering true", () => {
    const memory = new GuestMemory({ ramBytes: MiB });
    expect(memory.isGuestRange(-1, 4)).toBe(false);
    expect(memory.isGuestRange(0.5, 4)).toBe(false);
    expect(memory.isGuestRange(0, -4)).toBe(false);
    expect(memory.isGuestRange(Number.NaN, 4)).toBe(false);
    expect(memory.isPhysicalRange(2 ** 60, 4)).toBe(false);
  });

  it("refuses invalid configurations", () => {
    expect(() => new GuestMemory({ ramBytes: 0 })).toThrow(RangeError);
    expect(() => new GuestMemory({ ramBytes: MiB, vmmBytes: 2 * MiB })).toThrow(RangeError);
    expect(() => new GuestMemory({ ramBytes: MiB, reserved: [{ base: MiB - 1, length: 2 }] })).toThrow(
      RangeError,
    );
  });
});

describe("GuestMemory access", () => {
  it("reads and writes little-endian values", () => {
    const memory = new GuestMemory({ ramBytes: 4096 });
    memory.writeU32(0x10, 0x11223344);
    expect([...memory.read(0x10, 4)]).toEqual([0x44, 0x33, 0x22, 0x11]);
    expect(memory.readU16(0x11)).toBe(0x2233);
    expect(memory.readU8(0x13)).toBe(0x11);
    memory.writeU64(0x20, 0x0102030405060708n);
    expect(memory.readU32(0x20)).toBe(0x05060708);
    expect(memory.readU32(0x24)).toBe(0x01020304);
    expect(memory.readU64(0x20)).toBe(0x0102030405060708n);
    memory.writeU16(0x30, 0xbeef);
    memory.writeU8(0x32, 0x7f);
    expect(memory.readU32(0x30)).toBe(0x7fbeef);
    memory.writeU32(0x40, 0xffffffff);
    expect(memory.readU32(0x40)).toBe(0xffffffff);
  });

  it("copies on read and on write", () => {
    const memory = new GuestMemory({ ramBytes: 4096 });
    const data = new Uint8Array([1, 2, 3]);
    memory.write(100, data);
    data[0] = 9;
    const copy = memory.read(100, 3);
    copy[1] = 9;
    expect([...memory.read(100, 3)]).toEqual([1, 2, 3]);
    const target = new Uint8Array(3);
    memory.readInto(100, target);
    expect([...target]).toEqual([1, 2, 3]);
    memory.fill(101, 2, 0xaa);
    expect([...memory.read(100, 4)]).toEqual([1, 0xaa, 0xaa, 0]);
  });

  it("gives a live view for DMA without copies: writes through it are RAM writes", () => {
    const memory = new GuestMemory({ ramBytes: 4096, vmmBytes: 1024 });
    const view = memory.liveView(100, 4);
    view.set([1, 2, 3, 4]);
    expect([...memory.read(99, 6)]).toEqual([0, 1, 2, 3, 4, 0]);
    memory.writeU8(101, 9);
    expect(view[1]).toBe(9);
    expect(memory.liveView(4095, 1).length).toBe(1); // the VMM's region too: it is RAM
    expect(memory.liveView(4096, 0).length).toBe(0);
    expect(() => memory.liveView(4093, 4)).toThrow(MemoryError);
    expect(() => memory.liveView(-1, 1)).toThrow(MemoryError);
    expect(() => memory.liveView(0.5, 1)).toThrow(MemoryError);
  });

  it("allows device DMA into the VMM's reserved region, which the guest cannot see", () => {
    const memory = new GuestMemory({ ramBytes: 8192, vmmBytes: 4096 });
    memory.writeU32(4096, 42);
    expect(memory.readU32(4096)).toBe(42);
    expect(memory.isGuestRange(4096, 4)).toBe(false);
  });

  it("throws MemoryError for any access outside RAM", () => {
    const memory = new GuestMemory({ ramBytes: 4096 });
    const attempts: [string, () => unknown][] = [
      ["read", () => memory.read(4095, 2)],
      ["readInto", () => memory.readInto(4090, new Uint8Array(7))],
      ["write", () => memory.write(-1, new Uint8Array(1))],
      ["fill", () => memory.fill(0, 4097, 0)],
      ["readU8", () => memory.readU8(4096)],
      ["readU16", () => memory.readU16(4095)],
      ["readU32", () => memory.readU32(4093)],
      ["readU64", () => memory.readU64(4089)],
      ["writeU32", () => memory.writeU32(1.5, 0)],
      ["writeU64", () => memory.writeU64(4090, 0n)],
    ];
    for (const [name, attempt] of attempts) {
      expect(attempt, name).toThrow(MemoryError);
    }
    const error = (() => {
      try {
        memory.readU32(0x2000);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(MemoryError);
    expect((error as MemoryError).addr).toBe(0x2000);
    expect((error as MemoryError).length).toBe(4);
    expect((error as MemoryError).message).toContain("0x2000");
    // Nothing was written by the failed attempts.
    expect(memory.bytes.every((b) => b === 0)).toBe(true);
  });

  it("behaves like a byte array under random accesses", () => {
    const size = 256;
    const op = fc.record({
      kind: fc.constantFrom("write", "read", "u32", "w32", "fill"),
      addr: fc.integer({ min: -8, max: size + 8 }),
      length: fc.integer({ min: 0, max: 16 }),
      value: fc.integer({ min: 0, max: 0xffffffff }),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const memory = new GuestMemory({ ramBytes: size });
        const model = new Uint8Array(size);
        for (const { kind, addr, length, value } of ops) {
          const len = kind === "u32" || kind === "w32" ? 4 : length;
          const inside = addr >= 0 && addr + len <= size;
          const run = () => {
            switch (kind) {
              case "write": {
                const bytes = Uint8Array.from({ length: len }, (_, i) => (value + i) & 0xff);
                memory.write(addr, bytes);
                model.set(bytes, addr);
                return;
              }
              case "read":
                expect([...memory.read(addr, len)]).toEqual([...model.subarray(addr, addr + len)]);
                return;
              case "u32":
                expect(memory.readU32(addr)).toBe(new DataView(model.buffer).getUint32(addr, true));
                return;
              case "w32":
                memory.writeU32(addr, value);
                new DataView(model.buffer).setUint32(addr, value, true);
                return;
              case "fill":
                memory.fill(addr, len, value & 0xff);
                model.fill(value & 0xff, addr, addr + len);
                return;
            }
          };
          if (inside) run();
          else expect(run).toThrow(MemoryError);
        }
        expect([...memory.bytes]).toEqual([...model]);
      }),
    );
  });
});
