import { describe, expect, it } from "vitest";
import { checkLbaPattern, MemoryBackend, PatternSource } from "../../runtime/block/index.ts";
import { CowDisk } from "../../runtime/guest/cow.ts";
import {
  AhciCommandError,
  AhciDriverError,
  AhciGuestDriver,
  type AhciGuestDriverOptions,
  DEFAULT_PORT_IE,
} from "../../runtime/guest/driver.ts";
import { mulberry32 } from "../../runtime/guest/workloads.ts";
import { Machine } from "../../runtime/machine.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { boot, MODES, ProbeDisk, patternDisk } from "./helpers.ts";

const SECTOR = 512;

describe.each(MODES)("AhciGuestDriver ($name)", ({ mediated }) => {
  it("brings the port up and identifies the disk", async () => {
    const { machine, driver } = await boot({ disks: [patternDisk(65536)], mediated });
    const id = driver.identity;
    expect(id.sectors).toBe(65536);
    expect(driver.sectors).toBe(65536);
    expect(id.model).toBe("medic emulated SATA disk");
    expect(id.serial).toBe("MEDIC000000000000000");
    expect(id.lba48).toBe(true);
    expect(id.ncq).toBe(true);
    expect(id.ncqDepth).toBe(32);
    expect(id.flushExt).toBe(true);
    expect(id.checksumOk).toBe(true);
    expect(driver.ncq).toBe(true);
    expect(driver.queueDepth).toBe(32);
    expect(driver.port).toBe(0);
    // IDENTIFY, SET FEATURES, IDENTIFY through slot 0, each completed by an interrupt.
    expect(driver.stats.commands).toBe(3);
    expect(driver.stats.completions).toBe(3);
    expect(driver.stats.interrupts).toBeGreaterThanOrEqual(3);
    expect(driver.stats.errors).toBe(0);
    // The guest's structures are in guest RAM, the engine runs, interrupts are on.
    const regs = machine.controller.registers;
    expect(regs.get(0x100 + 0x18) & 0x11).toBe(0x11); // P0.CMD: ST | FRE
    expect(regs.get(0x100 + 0x14)).toBe(DEFAULT_PORT_IE);
    expect(DEFAULT_PORT_IE).toBe(0x7840007f); // what Linux writes (shared data, section A)
    expect(regs.get(0x04) >>> 0).toBe(0x80000002); // GHC: AE | IE
    expect(regs.get(0x100)).toBeGreaterThanOrEqual(1024 * 1024);
    expect(regs.get(0x100)).toBeLessThan(machine.guestRamBytes);
    await driver.close();
  });

  it("reads many random LBAs and sizes, all matching the lba pattern", async () => {
    const sectors = 1 << 20; // 512 MiB of pattern, computed on read
    const disk = new CowDisk(new PatternSource(sectors));
    const { driver } = await boot({ disks: [disk], mediated });
    const rand = mulberry32(42);
    const sizes = [1, 2, 7, 8, 16, 64, 128, 255, 256, 1000, 2048, 4096];
    const checks: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const count = sizes[Math.floor(rand() * sizes.length)]!;
      const lba = Math.floor(rand() * (sectors - count));
      checks.push(
        driver.read(lba, count).then((data) => {
          expect(data.length).toBe(count * SECTOR);
          expect(checkLbaPattern(data, lba)).toBe(-1);
        }),
      );
    }
    // The last sector and the first.
    checks.push(driver.read(sectors - 1, 1).then((d) => expect(checkLbaPattern(d, sectors - 1)).toBe(-1)));
    checks.push(driver.read(0, 1).then((d) => expect(checkLbaPattern(d, 0)).toBe(-1)));
    await Promise.all(checks);
    expect(driver.stats.errors).toBe(0);
    // readInto, readWith and the zero-copy guest path give the same bytes.
    const into = new Uint8Array(24 * SECTOR);
    await driver.readInto(777, into);
    expect(checkLbaPattern(into, 777)).toBe(-1);
    let seen = 0;
    await driver.readWith(5000, 5000, (view, offset) => {
      expect(checkLbaPattern(view, 5000 + offset / SECTOR)).toBe(-1);
      seen += view.length;
    });
    expect(seen).toBe(5000 * SECTOR);
  });

  it("writes and reads back (one sector, odd sizes, split requests, zero-copy)", async () => {
    const { machine, driver } = await boot({ disks: [patternDisk(65536)], mediated });
    const rand = mulberry32(7);
    const blobs: { lba: number; data: Uint8Array }[] = [];
    for (const count of [1, 3, 8, 129, 2048, 2049, 6000]) {
      const data = new Uint8Array(count * SECTOR);
      for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
      const lba = blobs.length === 0 ? 0 : blobs[blobs.length - 1]!.lba + 7000;
      blobs.push({ lba, data });
    }
    await Promise.all(blobs.map((b) => driver.write(b.lba, b.data)));
    for (const b of blobs) {
      const back = await driver.read(b.lba, b.data.length / SECTOR);
      expect(Buffer.compare(back, b.data)).toBe(0);
    }
    // The sector after a write is untouched.
    const after = blobs[0]!.lba + 1;
    expect(checkLbaPattern(await driver.read(after, 1), after)).toBe(-1);
    // Straight from and into guest RAM: one command of 3 PRD entries (9 MiB).
    const bytes = 9 * 1024 * 1024;
    const source = driver.allocator.alloc(bytes, 4096);
    const target = driver.allocator.alloc(bytes, 4096);
    const payload = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i += 4096) payload[i] = (i / 4096) & 0xff;
    machine.memory.write(source, payload);
    await driver.writeGuest(40000, bytes / SECTOR, source);
    await driver.readGuest(40000, bytes / SECTOR, target);
    expect(Buffer.compare(machine.memory.read(target, bytes), payload)).toBe(0);
    // writeWith fills the bounce buffer in place.
    await driver.writeWith(60000, 4, (view) => view.fill(0xab));
    expect((await driver.read(60000, 4)).every((b) => b === 0xab)).toBe(true);
  });

  it("keeps 32 NCQ commands in flight on the controller", async () => {
    const probe = new ProbeDisk(patternDisk(65536));
    const { driver } = await boot({ disks: [probe], mediated });
    const reads: Promise<void>[] = [];
    for (let i = 0; i < 256; i++) {
      const lba = i * 16;
      reads.push(driver.read(lba, 8).then((d) => expect(checkLbaPattern(d, lba)).toBe(-1)));
    }
    await Promise.all(reads);
    expect(driver.stats.maxInFlight).toBe(32);
    // The device really held 32 tags at once: PxSACT as the controller itself saw it.
    expect(probe.maxSact).toBe(32);
    expect(driver.stats.queuedCommands).toBe(256);
  });

  it("issues one PxSACT/PxCI pair per command in libahci style, and batches them by default", async () => {
    const perCommand = async (options: AhciGuestDriverOptions) => {
      const probe = new ProbeDisk(patternDisk(65536));
      const { driver } = await boot({ disks: [probe], mediated }, options);
      const writesBefore = driver.stats.mmioWrites;
      const data = await Promise.all(Array.from({ length: 320 }, (_, i) => driver.read(i * 8, 8)));
      expect(data.map((d, i) => checkLbaPattern(d, i * 8))).toEqual(data.map(() => -1));
      expect(probe.maxSact).toBe(32);
      return (driver.stats.mmioWrites - writesBefore) / 320;
    };
    const libahci = await perCommand({ coalesceInterrupts: false, batchDoorbells: false });
    // SACT + CI per command, PxIS + IS per interrupt, one interrupt per command.
    expect(libahci).toBeCloseTo(4, 1);
    const batched = await perCommand({});
    expect(batched).toBeLessThan(0.5);
  });

  it("runs commands concurrently inside the controller (virtual clock, slow disk)", async () => {
    const clock = new VirtualClock();
    const probe = new ProbeDisk(patternDisk(65536), (ms) => clock.sleep(ms), 5);
    const { driver } = await boot({ disks: [probe], mediated, clock });
    const start = clock.now();
    await Promise.all(Array.from({ length: 64 }, (_, i) => driver.read(i * 8, 8)));
    expect(probe.maxConcurrent).toBe(32);
    // Two waves of 32 commands, 5 ms each.
    expect(clock.now() - start).toBe(10);
  });

  it("flushes after the writes before it, and commands after it wait", async () => {
    const disk = patternDisk(65536);
    let flushes = 0;
    let writesAtFlush = -1;
    let writes = 0;
    const inner = disk.write.bind(disk);
    disk.write = async (lba, data) => {
      writes++;
      return inner(lba, data);
    };
    disk.flush = async () => {
      flushes++;
      writesAtFlush = writes;
    };
    const { driver } = await boot({ disks: [disk], mediated });
    const order: string[] = [];
    const ops = [
      ...Array.from({ length: 20 }, (_, i) =>
        driver.write(i * 8, new Uint8Array(4096).fill(i)).then(() => order.push("w")),
      ),
      driver.flush().then(() => order.push("flush")),
      driver.read(0, 8).then(() => order.push("r")),
    ];
    await Promise.all(ops);
    expect(flushes).toBe(1);
    expect(writesAtFlush).toBe(20);
    expect(order.indexOf("flush")).toBe(20);
    expect(order[21]).toBe("r");
  });

  it("rejects an out-of-range read with the task file, recovers, and the next read works", async () => {
    const { machine, driver } = await boot({ disks: [patternDisk(65536)], mediated });
    const error = await driver.read(65530, 8).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AhciCommandError);
    const failure = (error as AhciCommandError).failure;
    expect(failure.command).toBe("READ_FPDMA_QUEUED");
    expect(failure.lba).toBe(65530);
    expect(failure.status & 0x01).toBe(0x01); // ERR
    expect(failure.error & 0x04).toBe(0x04); // ABRT
    expect((error as Error).message).toMatch(
      /LBA 65530.*PxTFD 0x00001451.*IDNF ABRT.*beyond the disk's 65536 sectors/,
    );
    expect(driver.stats.recoveries).toBe(1);
    // The engine runs again and nothing is stuck.
    expect(machine.controller.registers.get(0x100 + 0x18) & 0x1).toBe(1);
    expect(checkLbaPattern(await driver.read(65528, 8), 65528)).toBe(-1);
    expect(checkLbaPattern(await driver.read(123, 77), 123)).toBe(-1);
    // An error amid a full queue: the good commands still succeed (retried alone), only the bad one fails.
    const results = await Promise.allSettled(
      Array.from({ length: 31 }, (_, i) => (i === 13 ? driver.read(70000, 8) : driver.read(i * 8, 8))),
    );
    results.forEach((r, i) => {
      if (i === 13) {
        expect(r.status).toBe("rejected");
        // The error is reported with its ATA status, even if PxTFD was overwritten meanwhile.
        expect(((r as PromiseRejectedResult).reason as Error).message).toMatch(
          /LBA 70000.*error 0x14 \[IDNF ABRT\]/,
        );
      } else {
        expect(r.status).toBe("fulfilled");
        expect(checkLbaPattern((r as PromiseFulfilledResult<Uint8Array>).value, i * 8)).toBe(-1);
      }
    });
    expect(await driver.read(8, 8).then((d) => checkLbaPattern(d, 8))).toBe(-1);
    expect(driver.inFlight).toBe(0);
    expect(driver.waiting).toBe(0);
  });

  it("retries the other queued commands alone after an NCQ error, and reports only the bad one", async () => {
    // Without interrupt mitigation the handler runs while the other commands are still on the
    // device: stopping the engine drops them, and libata-style EH retries each one alone.
    const { driver } = await boot({ disks: [patternDisk(65536)], mediated }, { coalesceInterrupts: false });
    const results = await Promise.allSettled(
      Array.from({ length: 31 }, (_, i) => (i === 13 ? driver.read(70000, 8) : driver.read(i * 8, 8))),
    );
    const rejected = results.flatMap((r, i) =>
      r.status === "rejected" ? [{ i, reason: r.reason as Error }] : [],
    );
    expect(rejected.map((r) => r.i)).toEqual([13]);
    expect(rejected[0]!.reason.message).toMatch(/LBA 70000.*PxTFD 0x00001451.*error 0x14 \[IDNF ABRT\]/);
    results.forEach((r, i) => {
      if (i !== 13) expect(checkLbaPattern((r as PromiseFulfilledResult<Uint8Array>).value, i * 8)).toBe(-1);
    });
    expect(driver.stats.retries).toBeGreaterThan(0);
    expect(driver.stats.recoveries).toBe(2); // once amid the queue, once when it failed alone
    expect(checkLbaPattern(await driver.read(8, 8), 8)).toBe(-1);
  });

  it("rejects bad arguments before touching the device", async () => {
    const { driver } = await boot({ disks: [patternDisk(1024)], mediated });
    const commands = driver.stats.commands;
    await expect(driver.read(-1, 1)).rejects.toThrow(RangeError);
    await expect(driver.read(0, 0)).rejects.toThrow(/sector count/);
    await expect(driver.read(1.5, 1)).rejects.toThrow(/LBA/);
    await expect(driver.write(0, new Uint8Array(100))).rejects.toThrow(/whole sectors/);
    await expect(driver.readGuest(0, 1, 3)).rejects.toThrow(/guest buffer/);
    await expect(driver.readGuest(0, 1, 2 ** 40)).rejects.toThrow(/guest buffer/);
    expect(driver.stats.commands).toBe(commands);
  });

  it("polls when interrupts are off", async () => {
    const { machine, driver } = await boot({ disks: [patternDisk(65536)], mediated }, { interrupts: false });
    expect(machine.controller.registers.get(0x04) & 0x2).toBe(0); // GHC.IE off
    const data = await Promise.all(Array.from({ length: 40 }, (_, i) => driver.read(i * 100, 16)));
    expect(data.map((d, i) => checkLbaPattern(d, i * 100))).toEqual(data.map(() => -1));
    await driver.write(10, new Uint8Array(1024).fill(5));
    await driver.flush();
    expect((await driver.read(10, 2)).every((b) => b === 5)).toBe(true);
    await expect(driver.read(65536, 1)).rejects.toThrow(AhciCommandError);
    expect(checkLbaPattern(await driver.read(1, 1), 1)).toBe(-1);
    expect(driver.stats.interrupts).toBe(0);
    expect(driver.stats.polls).toBeGreaterThan(0);
    expect(machine.irqPending).toBe(false);
  });

  it("falls back to non-queued DMA one command at a time without NCQ", async () => {
    const probe = new ProbeDisk(patternDisk(65536));
    const { driver } = await boot({ disks: [probe], mediated }, { ncq: false });
    expect(driver.ncq).toBe(false);
    expect(driver.queueDepth).toBe(1);
    const data = await Promise.all(Array.from({ length: 20 }, (_, i) => driver.read(i * 50, 9)));
    expect(data.map((d, i) => checkLbaPattern(d, i * 50))).toEqual(data.map(() => -1));
    await driver.write(3, new Uint8Array(512).fill(9));
    expect((await driver.read(3, 1)).every((b) => b === 9)).toBe(true);
    await expect(driver.read(65535, 2)).rejects.toThrow(/READ_DMA_EXT of 2 sectors at LBA 65535/);
    expect(checkLbaPattern(await driver.read(65535, 1), 65535)).toBe(-1);
    expect(driver.stats.maxInFlight).toBe(1);
    expect(driver.stats.queuedCommands).toBe(0);
    expect(probe.maxSact).toBe(0);
  });

  it("honours a smaller queue depth and bounce buffer", async () => {
    const { driver } = await boot(
      { disks: [patternDisk(65536)], mediated },
      { queueDepth: 4, bounceBytes: 8192 },
    );
    expect(driver.queueDepth).toBe(4);
    expect(driver.maxTransferSectors).toBe(16);
    const data = await driver.read(100, 1000);
    expect(checkLbaPattern(data, 100)).toBe(-1);
    expect(driver.stats.maxInFlight).toBe(4);
  });
});

describe("AhciGuestDriver across de-virtualization", () => {
  it("keeps working after the VMM drops its traps and turns off, with no exits after", async () => {
    const { machine, driver } = await boot({ disks: [patternDisk(65536)], mediated: true });
    await Promise.all(Array.from({ length: 64 }, (_, i) => driver.read(i * 8, 8)));
    await driver.write(100, new Uint8Array(4096).fill(0x5a));
    await driver.idle();
    expect(machine.devirtualize()).toBe(true);
    const exits = machine.host.stats.exits;
    const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => driver.read(i * 8 + 1000, 8)));
    reads.forEach((d, i) => {
      expect(checkLbaPattern(d, i * 8 + 1000)).toBe(-1);
    });
    expect((await driver.read(100, 8)).every((b) => b === 0x5a)).toBe(true);
    await driver.flush();
    await expect(driver.read(65536, 8)).rejects.toThrow(AhciCommandError);
    expect(checkLbaPattern(await driver.read(8, 8), 8)).toBe(-1);
    expect(machine.host.stats.exits).toBe(exits);
    expect(machine.host.stats.exitsAfterOff).toBe(0);
  });
});

describe("AhciGuestDriver start-up failures", () => {
  it("refuses a port the HBA does not implement", async () => {
    const machine = new Machine({ disks: [new MemoryBackend(64)] });
    await expect(AhciGuestDriver.open(machine, { port: 3 })).rejects.toThrow(AhciDriverError);
    await expect(AhciGuestDriver.open(machine, { port: 3 })).rejects.toThrow(
      /port 3 is not implemented.*PI = 0x00000001/,
    );
  });

  it("says so when guest RAM is too small for its buffers", async () => {
    const machine = new Machine({ disks: [new MemoryBackend(64)], ramMiB: 1 });
    await expect(AhciGuestDriver.open(machine)).rejects.toThrow(/guest RAM exhausted/);
  });

  it("drives the second port of a two-disk HBA beside the first", async () => {
    const machine = new Machine({ disks: [patternDisk(4096), new MemoryBackend(8192)] });
    const first = await AhciGuestDriver.open(machine, { port: 0, memoryEnd: 48 * 1024 * 1024 });
    const second = await AhciGuestDriver.open(machine, {
      port: 1,
      resetHba: false,
      memoryBase: first.allocator.end, // above everything the first driver may use
      bounceBytes: 64 * 1024,
    });
    expect(second.sectors).toBe(8192);
    await second.write(5, new Uint8Array(512).fill(1));
    const [a, b] = await Promise.all([first.read(5, 1), second.read(5, 1)]);
    expect(checkLbaPattern(a, 5)).toBe(-1);
    expect(b.every((x) => x === 1)).toBe(true);
  });
});
