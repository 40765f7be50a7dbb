import { mkdtemp, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileBackend } from "../../runtime/block/file.ts";
import { SECTOR_SIZE } from "../../runtime/block/types.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { backendContract, expectBlockError, readIntoContract, sectorsOf } from "./contract.ts";

let dir: string;
let counter = 0;
const fresh = () => join(dir, `disk-${counter++}.img`);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "medic-file-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("FileBackend", () => {
  backendContract((sectors) => FileBackend.open(fresh(), { writable: true, create: true, sectors }));

  readIntoContract(
    async () => {
      const path = fresh();
      await writeFile(path, sectorsOf(0, 20));
      return FileBackend.open(path, { writable: false });
    },
    (lba, count) => sectorsOf(lba, count),
  );

  it("stores sectors at their file offsets and keeps them across reopen", async () => {
    const path = fresh();
    const disk = await FileBackend.open(path, { writable: true, create: true, sectors: 16 });
    expect(disk.description).toContain(path);
    await disk.write(3, sectorsOf(3, 2));
    await disk.flush();
    await disk.close();
    const raw = await readFile(path);
    expect(raw.length).toBe(16 * SECTOR_SIZE);
    expect(new Uint8Array(raw.subarray(3 * SECTOR_SIZE, 5 * SECTOR_SIZE))).toEqual(sectorsOf(3, 2));
    const again = await FileBackend.open(path, { writable: false });
    expect(again.sectors).toBe(16);
    expect(await again.read(3, 2)).toEqual(sectorsOf(3, 2));
    await again.close();
  });

  it("reports a file truncated behind its back as a short read", async () => {
    const path = fresh();
    await writeFile(path, sectorsOf(0, 8));
    const disk = await FileBackend.open(path, { writable: false });
    expect(disk.sectors).toBe(8);
    await truncate(path, 4 * SECTOR_SIZE + 100);
    expect(await disk.read(0, 4)).toEqual(sectorsOf(0, 4));
    await expectBlockError(disk.readInto(3, 3, new Uint8Array(3 * SECTOR_SIZE)), "short-read");
    const error = await expectBlockError(disk.read(3, 3), "short-read");
    expect(error.message).toContain(path);
    expect(error.message).toContain(String(4 * SECTOR_SIZE + 100));
    await expectBlockError(disk.read(7, 1), "short-read");
    await disk.close();
  });

  it("names the path when the file is missing", async () => {
    const path = join(dir, "missing.img");
    const error = await expectBlockError(FileBackend.open(path, { writable: false }), "config");
    expect(error.message).toContain(path);
    expect(error.message).toMatch(/no such file/);
  });

  it("names the path when the size is not whole sectors", async () => {
    const path = fresh();
    await writeFile(path, new Uint8Array(1000));
    const error = await expectBlockError(FileBackend.open(path, { writable: false }), "config");
    expect(error.message).toContain(path);
    expect(error.message).toMatch(/1000 bytes is not a multiple of 512/);
  });

  it("refuses writes when opened read-only", async () => {
    const path = fresh();
    await writeFile(path, new Uint8Array(4 * SECTOR_SIZE));
    const disk = await FileBackend.open(path, { writable: false });
    const error = await expectBlockError(disk.write(0, sectorsOf(0, 1)), "config");
    expect(error.message).toMatch(/read-only/);
    expect(await readFile(path)).toEqual(Buffer.alloc(4 * SECTOR_SIZE));
    await disk.close();
  });

  it("grows a file to the requested size only when asked to create", async () => {
    const path = fresh();
    await writeFile(path, new Uint8Array(2 * SECTOR_SIZE));
    await expectBlockError(FileBackend.open(path, { writable: true, sectors: 8 }), "config");
    const disk = await FileBackend.open(path, { writable: true, create: true, sectors: 8 });
    expect(disk.sectors).toBe(8);
    expect((await stat(path)).size).toBe(8 * SECTOR_SIZE);
    await disk.close();
  });

  it("exposes only the first sectors of a larger file", async () => {
    const path = fresh();
    await writeFile(path, sectorsOf(0, 8));
    const disk = await FileBackend.open(path, { writable: false, sectors: 4 });
    expect(disk.sectors).toBe(4);
    expect(await disk.read(0, 4)).toEqual(sectorsOf(0, 4));
    await expectBlockError(disk.read(4, 1), "range");
    await disk.close();
  });

  it("rejects create without writable, directories and bad sizes", async () => {
    await expectBlockError(FileBackend.open(fresh(), { writable: false, create: true }), "config");
    const error = await expectBlockError(FileBackend.open(dir, { writable: false }), "config");
    expect(error.message).toContain(dir);
    await expectBlockError(
      FileBackend.open(fresh(), { writable: true, create: true, sectors: -1 }),
      "config",
    );
  });

  it("lets in-flight requests finish when closed", async () => {
    const disk = await FileBackend.open(fresh(), { writable: true, create: true, sectors: 256 });
    const writes = [];
    for (let i = 0; i < 16; i++) writes.push(disk.write(i * 16, sectorsOf(i * 16, 16)));
    const closed = disk.close();
    await Promise.all(writes);
    await closed;
    await expectBlockError(disk.read(0, 1), "closed");
  });

  it("tracks its I/O on a virtual clock so simulated time waits for it", async () => {
    const clock = new VirtualClock();
    const path = fresh();
    await writeFile(path, sectorsOf(0, 64));
    const disk = await FileBackend.open(path, { writable: false, clock });
    const read = disk.read(0, 64);
    expect(clock.pendingTracked).toBe(1);
    expect(await read).toEqual(sectorsOf(0, 64));
    expect(clock.pendingTracked).toBe(0);
    await disk.close();
  });
});
