import { describe, expect, it } from "vitest";
import { PORT_BASE, PORT_CLB } from "../../generated/ahci/registers.ts";
import { SparseBackend } from "../../runtime/block/sparse.ts";
import { FetchBuffers } from "../../runtime/deploy/fetch-buffers.ts";
import { AhciGuestDriver } from "../../runtime/guest/driver.ts";
import { DEFAULT_VMM_BYTES, Machine } from "../../runtime/machine.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { GuestMemory } from "../../runtime/vmx/memory.ts";

const KiB = 1024;

describe("FetchBuffers", () => {
  it("carves the arena first, then hands out heap buffers", () => {
    const arena = new Uint8Array(10 * KiB).subarray(1 * KiB, 9 * KiB); // 8 KiB, at an offset
    const pool = new FetchBuffers(3 * KiB, arena);
    const a = pool.take();
    const b = pool.take();
    const c = pool.take();
    expect(a.buffer).toBe(arena.buffer);
    expect(a.byteOffset).toBe(arena.byteOffset);
    expect(b.byteOffset).toBe(arena.byteOffset + 3 * KiB);
    // Only two whole buffers fit in 8 KiB: the third comes from the heap.
    expect(c.buffer).not.toBe(arena.buffer);
    expect([a.length, b.length, c.length]).toEqual([3 * KiB, 3 * KiB, 3 * KiB]);
  });

  it("reuses a buffer only once every block in it is released", () => {
    const arena = new Uint8Array(8 * KiB);
    const pool = new FetchBuffers(4 * KiB, arena);
    const a = pool.take();
    pool.hold(a, 2);
    const first = a.subarray(0, 2 * KiB);
    const second = a.subarray(2 * KiB, 4 * KiB);
    expect(pool.owns(second)).toBe(true);
    pool.release(first);
    expect(pool.owns(second)).toBe(true);
    const b = pool.take(); // the arena's other buffer, not a
    expect(b.byteOffset).toBe(4 * KiB);
    pool.release(second);
    expect(pool.owns(first)).toBe(false);
    const again = pool.take();
    expect(again.byteOffset).toBe(a.byteOffset);
    expect(again.length).toBe(4 * KiB);
  });

  it("tells arena buffers apart though they share one ArrayBuffer, and heap ones by theirs", () => {
    const arena = new Uint8Array(8 * KiB);
    const pool = new FetchBuffers(4 * KiB, arena);
    const a = pool.take();
    const b = pool.take();
    const heap = pool.take();
    pool.hold(a, 1);
    pool.hold(heap, 1);
    expect(pool.owns(a)).toBe(true);
    expect(pool.owns(b)).toBe(false);
    expect(pool.owns(heap.subarray(100, 200))).toBe(true);
    expect(pool.owns(new Uint8Array(4 * KiB))).toBe(false);
    pool.release(heap);
    expect(pool.owns(heap)).toBe(false);
    expect(pool.take().buffer).toBe(heap.buffer);
  });

  it("keeps nothing given back after close", () => {
    const pool = new FetchBuffers(4 * KiB, new Uint8Array(4 * KiB));
    const a = pool.take();
    pool.hold(a, 1);
    pool.close();
    pool.release(a);
    expect(pool.owns(a)).toBe(false);
    expect(pool.take().buffer).not.toBe(a.buffer); // the arena's only buffer is not handed out again
  });
});

describe("own writes from the VMM's DMA memory", () => {
  async function rig() {
    const disk = new SparseBackend(8192, 128, "local disk");
    const machine = new Machine({
      disks: [disk],
      mediated: true,
      clock: new VirtualClock(),
      ramMiB: 4,
      dmaBytes: 1024 * KiB,
    });
    const driver = await AhciGuestDriver.open(machine);
    const memory = machine.memory as GuestMemory;
    expect(memory).toBeInstanceOf(GuestMemory);
    const privateEnd = memory.vmmRegion!.base + DEFAULT_VMM_BYTES;
    const ownBuffer = memory.liveView(privateEnd - machine.mediator!.bufferBytes(), 64 * KiB);
    ownBuffer.fill(0x5a);
    return { disk, machine, driver, arena: machine.dmaArena!, ownBuffer };
  }

  /** A write of `sectors` sectors at `lba` whose data lies in the arena at `offset`, filled with `fill`. */
  function arenaWrite(arena: Uint8Array, offset: number, lba: number, sectors: number, fill: number) {
    const data = arena.subarray(offset, offset + sectors * 512).fill(fill);
    return { op: "write" as const, lba, sectors, data };
  }

  /** Counts the mediator's writes of port 0's command list base: two per own run (its list in, the guest's back). */
  function countListSwaps(machine: Machine): () => number {
    let swaps = 0;
    const write = machine.controller.write.bind(machine.controller);
    machine.controller.write = (offset: number, size: number, value: number) => {
      if (offset === PORT_BASE + PORT_CLB) swaps++;
      return write(offset, size, value);
    };
    return () => swaps;
  }

  const untouched = (view: Uint8Array) => view.every((b) => b === 0x5a);

  it("go to the disk from where they lie: the mediator's own buffer is not used", async () => {
    const { disk, machine, arena, ownBuffer } = await rig();
    expect(arena.length).toBe(1024 * KiB);
    const data = arena.subarray(128 * KiB, 160 * KiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    const result = await machine.mediator!.issueOwn(0, { op: "write", lba: 100, sectors: 64, data });
    expect(result).toEqual({ ok: true });
    expect(await disk.read(100, 64)).toEqual(data.slice());
    expect(untouched(ownBuffer)).toBe(true);
  });

  it("are copied into the own buffer when the data lies elsewhere or is misaligned", async () => {
    const { disk, machine, arena, ownBuffer } = await rig();
    const heap = new Uint8Array(32 * KiB).fill(0x11);
    expect(await machine.mediator!.issueOwn(0, { op: "write", lba: 0, sectors: 64, data: heap })).toEqual({
      ok: true,
    });
    expect(await disk.read(0, 64)).toEqual(heap);
    expect(untouched(ownBuffer)).toBe(false);

    ownBuffer.fill(0x5a);
    // An odd address cannot be a DMA buffer's (the spec's PRD link is word aligned).
    const odd = arena.subarray(1, 1 + 512).fill(0x22);
    expect(await machine.mediator!.issueOwn(0, { op: "write", lba: 200, sectors: 1, data: odd })).toEqual({
      ok: true,
    });
    expect(await disk.read(200, 1)).toEqual(odd.slice());
    expect(untouched(ownBuffer)).toBe(false);
  });

  it("issued while a run of them is on the device, join it: the port is switched to the mediator's list once", async () => {
    const { disk, machine, arena } = await rig();
    const swaps = countListSwaps(machine);
    const mediator = machine.mediator!;
    const later: Promise<unknown>[] = [];
    const first = mediator.issueOwn(0, arenaWrite(arena, 0, 0, 64, 0x31));
    const second = mediator.issueOwn(0, arenaWrite(arena, 32 * KiB, 64, 64, 0x32));
    // Issued once the first is done, while the second still runs.
    void first.then(() => {
      later.push(mediator.issueOwn(0, arenaWrite(arena, 64 * KiB, 128, 64, 0x33)));
      later.push(mediator.issueOwn(0, arenaWrite(arena, 96 * KiB, 192, 64, 0x34)));
    });
    expect(await Promise.all([first, second])).toEqual([{ ok: true }, { ok: true }]);
    expect(await Promise.all(later)).toEqual([{ ok: true }, { ok: true }]);
    for (const [i, fill] of [0x31, 0x32, 0x33, 0x34].entries()) {
      expect((await disk.read(i * 64, 64)).every((b) => b === fill)).toBe(true);
    }
    expect(swaps()).toBe(2);
  });

  it("do not join a run while a guest command waits: the guest's command goes first", async () => {
    const { machine, driver, arena } = await rig();
    const mediator = machine.mediator!;
    const order: string[] = [];
    let third: Promise<unknown> = Promise.resolve();
    const first = mediator.issueOwn(0, arenaWrite(arena, 0, 0, 64, 0x41));
    const second = mediator.issueOwn(0, arenaWrite(arena, 32 * KiB, 64, 64, 0x42));
    // The guest's read arrives while the run is on the device: it is held until the run ends.
    const guest = driver.read(1000, 8).then(() => order.push("guest"));
    void first.then(() => {
      third = mediator.issueOwn(0, arenaWrite(arena, 64 * KiB, 128, 64, 0x43)).then(() => order.push("own"));
    });
    await Promise.all([first, second, guest]);
    await third;
    expect(order).toEqual(["guest", "own"]);
  });
});
