/**
 * Deployment-level faults against real servers: an nbdkit killed and restarted mid-deployment,
 * nbdkit's error filter failing reads past the retry limit (the deployment pauses, the guest's
 * pending read fails as a disk read error, and the copy resumes when the server heals), the
 * command giving up and resuming, and a local disk that fills up (a real, tiny tmpfs).
 */

import { existsSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineEvent } from "../../runtime/deploy/engine.ts";
import { DeploySession, type Workload } from "../../runtime/deploy/session.ts";
import { AhciCommandError, AhciGuestDriver } from "../../runtime/guest/driver.ts";
import type { SourceEvent } from "../../runtime/sources/options.ts";
import { RealClock } from "../../runtime/vmx/clock.ts";
import { runMedic } from "../medic-cli.ts";
import { execFileAsync, makeRandomImage, makeTempDir, NbdkitServer, removeDir } from "../sources/servers.ts";

const MiB = 1024 * 1024;
const IMAGE_BYTES = 16 * MiB;
const SECTORS = IMAGE_BYTES / 512;
const BLOCK = 64 * 1024;

let dir: string;
let imagePath: string;
let image: Buffer;
const servers: NbdkitServer[] = [];

beforeAll(async () => {
  dir = await makeTempDir("medic-faults-");
  imagePath = join(dir, "image.raw");
  image = await makeRandomImage(imagePath, IMAGE_BYTES);
});

afterAll(async () => {
  for (const s of servers) await s.stop().catch(() => {});
  await removeDir(dir);
});

async function nbdkit(options: Parameters<typeof NbdkitServer.start>[1]): Promise<NbdkitServer> {
  const server = await NbdkitServer.start(dir, options);
  servers.push(server);
  return server;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function imageAt(lba: number, sectors: number): Buffer {
  return image.subarray(lba * 512, (lba + sectors) * 512);
}

/** A guest that runs `body` with a driver on the deploying machine. */
function guest(body: (driver: AhciGuestDriver) => Promise<{ reads: number; errors: string[] }>): Workload {
  return {
    name: "test guest",
    async run(env) {
      const driver = await AhciGuestDriver.open(env.machine);
      try {
        const { reads, errors } = await body(driver);
        return { reads, writes: 0, written: new Map(), errors };
      } finally {
        await driver.close();
      }
    },
  };
}

/** Blocks the bitmap beside `disk` marks local (read from its file), and which of them lack the image's data. */
async function bitmapCheck(disk: string): Promise<{ marked: number; wrong: number[] }> {
  const path = `${disk}.medic-bitmap`;
  if (!existsSync(path)) return { marked: 0, wrong: [] };
  const file = await readFile(path);
  expect(file.subarray(0, file.indexOf(0x0a)).toString()).toMatch(/^medic-bitmap v1 /);
  const bits = file.subarray(file.indexOf(0x0a) + 1);
  const data = await readFile(disk);
  const wrong: number[] = [];
  let marked = 0;
  for (let b = 0; b < IMAGE_BYTES / BLOCK; b++) {
    if ((bits[b >>> 3]! & (1 << (b & 7))) === 0) continue;
    marked++;
    if (Buffer.compare(data.subarray(b * BLOCK, (b + 1) * BLOCK), image.subarray(b * BLOCK, (b + 1) * BLOCK)))
      wrong.push(b);
  }
  return { marked, wrong };
}

const medic = runMedic;

async function until(what: string, done: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe("deployment against a real NBD server that fails", () => {
  it("nbdkit killed mid-deployment and restarted: the guest's read waits, gets the image's data, and the disk verifies", async () => {
    const server = await nbdkit({ plugin: "file", pluginArgs: [`file=${imagePath}`] });
    const disk = join(dir, "killed.disk");
    const events: (EngineEvent | SourceEvent)[] = [];
    let killedAt = 0;
    let restartingAt = 0;
    const workload = guest(async (driver) => {
      expect(Buffer.compare(await driver.read(0, 8), imageAt(0, 8))).toBe(0);
      await until("the server to be killed", () => killedAt > 0);
      // A block the sequential copy has not reached yet: only the server can answer it.
      const lba = SECTORS - 64;
      const data = await driver.read(lba, 64);
      // Not before the restart began (the client may reconnect before restart() has returned).
      expect(restartingAt, "the read completed only once the server was back").toBeGreaterThan(0);
      expect(Buffer.compare(data, imageAt(lba, 64))).toBe(0);
      return { reads: 2, errors: [] };
    });
    const session = await DeploySession.open({
      image: server.url(),
      disk,
      clock: new RealClock(),
      workload,
      linkBytesPerSecond: (40e6 / 8) as number, // 16 MiB take ~3.4 s: the kill lands mid-copy
      onEvent: (e) => events.push(e),
    });
    try {
      const running = session.run();
      await sleep(800);
      expect(session.engine.localBytes).toBeLessThan(IMAGE_BYTES);
      await server.kill();
      killedAt = Date.now();
      await sleep(1500);
      restartingAt = Date.now();
      await server.restart();
      const summary = await running;
      expect(summary.guest_errors).toEqual([]);
      expect(summary.deploy_done_ms).not.toBeNull();
      expect(summary.exits_after_devirt).toBe(0);
      expect(await session.verify(new Map())).toEqual([]);
      expect(events.some((e) => "kind" in e && e.kind === "reconnected")).toBe(true);
    } finally {
      await session.close();
    }
    expect(Buffer.compare(await readFile(disk), image)).toBe(0);
  }, 60_000);

  it("reads failing past the retry limit (nbdkit error filter): the deployment pauses, the guest's read fails as a disk read error, and it resumes when the server heals", async () => {
    const errorFile = join(dir, "errors-on");
    await writeFile(errorFile, "");
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["error"],
      filterArgs: ["error-pread-rate=100%", "error=EIO", `error-file=${errorFile}`],
    });
    const disk = join(dir, "paused.disk");
    const events: (EngineEvent | SourceEvent)[] = [];
    const lba = SECTORS - 128;
    const workload = guest(async (driver) => {
      const failed = await driver.read(lba, 8).then(
        () => null,
        (error: unknown) => error,
      );
      expect(failed, "the read of a block the server cannot deliver").toBeInstanceOf(AhciCommandError);
      const failure = (failed as AhciCommandError).failure;
      expect(failure.status & 0x01, "ATA status ERR").toBe(1);
      expect(failure.portIs & (1 << 30), "PxIS.TFES").not.toBe(0);
      expect(events.some((e) => "type" in e && e.type === "paused")).toBe(true);
      // The server heals; the same read now returns the image's data.
      await rm(errorFile);
      const data = await driver.read(lba, 8);
      expect(Buffer.compare(data, imageAt(lba, 8))).toBe(0);
      return { reads: 2, errors: [] };
    });
    const session = await DeploySession.open({
      image: server.url(),
      disk,
      clock: new RealClock(),
      workload,
      retries: 1,
      onEvent: (e) => events.push(e),
    });
    try {
      const summary = await session.run();
      expect(summary.deploy_done_ms).not.toBeNull();
      expect(await session.verify(new Map())).toEqual([]);
    } finally {
      await session.close();
    }
    const kinds = events.map((e) => ("type" in e ? e.type : e.kind));
    expect(kinds).toContain("paused");
    expect(kinds.indexOf("resumed")).toBeGreaterThan(kinds.indexOf("paused"));
    const paused = events.find((e) => "type" in e && e.type === "paused") as { error: string };
    expect(paused.error).toMatch(/cannot fetch sectors \d+\.\.\d+ of the image: nbd:\/\/.*EIO/);
    expect(Buffer.compare(await readFile(disk), image)).toBe(0);
  }, 60_000);
});

describe("medic deploy against a failing server, and a full local disk", () => {
  it("gives up with one clear line when the server keeps failing, records only good blocks, and a second run resumes and verifies", async () => {
    const errorFile = join(dir, "errors-later");
    const server = await nbdkit({
      plugin: "file",
      pluginArgs: [`file=${imagePath}`],
      filters: ["error"],
      filterArgs: ["error-pread-rate=100%", "error=EIO", `error-file=${errorFile}`],
    });
    const disk = join(dir, "give-up.disk");
    const common = ["deploy", "--image", server.url(), "--disk", disk, "--workload", "none"];
    const first = await medic(
      [...common, "--link-mbps", "40", "--retries", "1", "--give-up-after", "1"],
      async (stderr) => {
        // Let part of the image arrive, then make every read fail.
        await until("progress", () => /\b[1-9][\d.]* MiB/.test(stderr()));
        await writeFile(errorFile, "");
      },
    );
    expect(first.code, first.stderr).toBe(1);
    expect(first.stderr).toMatch(
      /deployment paused: cannot fetch sectors \d+\.\.\d+ of the image: nbd:\/\/.*EIO/,
    );
    // The last line says what happened and what to do.
    expect(first.stderr.trimEnd().split("\n").at(-1)).toMatch(
      /^medic deploy: .*image source keeps failing .*gave up after 1 s paused with [\d.]+ MiB of 16\.0 MiB local: run the same command again to resume$/,
    );
    expect(first.stderr).not.toMatch(/\n\s+at /);
    const afterFirst = await bitmapCheck(disk);
    expect(afterFirst.marked, "blocks made durable before the errors").toBeGreaterThan(0);
    expect(afterFirst.marked).toBeLessThan(SECTORS / 128);
    expect(afterFirst.wrong).toEqual([]);

    await rm(errorFile);
    const second = await medic([...common, "--verify", "--json"]);
    expect(second.code, second.stderr).toBe(0);
    const summary = JSON.parse(second.stdout);
    expect(summary.resumed).toBe(true);
    expect(summary.local_bytes_at_start).toBe(afterFirst.marked * BLOCK);
    expect(summary.bytes_fetched).toBe(IMAGE_BYTES - afterFirst.marked * BLOCK);
    expect(summary.verified).toBe(true);
  }, 90_000);

  it("a disk on a read-only file system: exit 1, one line saying it is not writable", async () => {
    const mount = join(dir, "readonly");
    await execFileAsync("mkdir", ["-p", mount]);
    await execFileAsync("mount", ["-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", mount]).catch((error) => {
      throw new Error(`this test mounts a read-only tmpfs and needs root (CAP_SYS_ADMIN): ${error}`);
    });
    try {
      const run = await medic([
        "deploy",
        "--image",
        imagePath,
        "--disk",
        join(mount, "disk.img"),
        "--workload",
        "none",
      ]);
      expect(run.code).toBe(1);
      expect(run.stderr.trimEnd().split("\n")).toEqual([
        expect.stringMatching(
          /^medic deploy: cannot open the disk .*disk\.img for writing: .*read-only file system/,
        ),
      ]);
    } finally {
      await execFileAsync("umount", [mount]);
    }
  });

  it("a local disk that fills up: exit 1 naming the disk's error, and the bitmap marks only blocks on the disk", async () => {
    const mount = join(dir, "small");
    await execFileAsync("mkdir", ["-p", mount]);
    // A real full disk: a 4 MiB tmpfs holding a 16 MiB sparse disk file.
    await execFileAsync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]).catch((error) => {
      throw new Error(`this test mounts a 4 MiB tmpfs and needs root (CAP_SYS_ADMIN): ${error}`);
    });
    try {
      const disk = join(mount, "disk.img");
      const run = await medic(["deploy", "--image", imagePath, "--disk", disk, "--workload", "none"]);
      expect(run.code, run.stderr).toBe(1);
      const last = run.stderr.trimEnd().split("\n").at(-1)!;
      expect(last).toMatch(
        /the deployment stopped: local disk write at sector \d+ failed: .*\(the local disk said: write at sector \d+: .*(ENOSPC|no space left)/i,
      );
      expect(run.stderr).not.toMatch(/\n\s+at /);
      if (existsSync(`${disk}.medic-bitmap`)) {
        const check = await bitmapCheck(disk);
        expect(check.marked).toBeLessThan(SECTORS / 128);
        expect(check.wrong).toEqual([]);
      }
    } finally {
      await execFileAsync("umount", [mount]);
    }
  }, 60_000);
});
