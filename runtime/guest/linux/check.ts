/**
 * Checks a finished guest disk from the outside, with e2fsprogs (the builder's own tool set): the root
 * file system is consistent (`e2fsck -fn`), and the files the guest wrote are there with the content the
 * build manifest expects (`debugfs -R "cat PATH"`). Nothing is mounted; the partition is reached with
 * e2fsprogs' `FILE?offset=N` syntax. The guest remounts its root read-only before powering off, so the
 * journal is checkpointed and the file system on the disk is clean.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import type { GuestDataFile, GuestManifest } from "./build.ts";

const run = promisify(execFile);
const SECTOR = 512;

export interface GuestFileCheck {
  readonly path: string;
  readonly expectedSha256: string;
  /** null: the file is not on the disk. */
  readonly sha256: string | null;
  readonly ok: boolean;
}

export interface GuestDiskCheck {
  /** e2fsck -fn found nothing to fix. */
  readonly fsckClean: boolean;
  readonly fsckOutput: string;
  readonly files: readonly GuestFileCheck[];
  readonly ok: boolean;
}

/** e2fsprogs programs the check needs; missing ones are named in the error. */
export function e2fsTools(): { debugfs: string; e2fsck: string } {
  const find = (name: string): string | undefined =>
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map((d) => `${d}/${name}`).find((p) => existsSync(p));
  const debugfs = find("debugfs");
  const e2fsck = find("e2fsck");
  if (!debugfs || !e2fsck) {
    throw new Error(
      `cannot check the guest's disk: ${[!debugfs && "debugfs", !e2fsck && "e2fsck"].filter(Boolean).join(" and ")} not found (apt-get install e2fsprogs)`,
    );
  }
  return { debugfs, e2fsck };
}

/** Checks the root fs on `diskPath` and the files the guest writes (manifest `writeFile`, `afterFile`). */
export async function checkGuestDisk(diskPath: string, manifest: GuestManifest): Promise<GuestDiskCheck> {
  const tools = e2fsTools();
  const device = `${diskPath}?offset=${manifest.partitionStartLba * SECTOR}`;
  let fsckClean = true;
  let fsckOutput: string;
  try {
    const { stdout, stderr } = await run(tools.e2fsck, ["-fn", device], { maxBuffer: 1 << 24 });
    fsckOutput = `${stdout}${stderr}`;
  } catch (error) {
    fsckClean = false;
    const e = error as { stdout?: string; stderr?: string; message: string };
    fsckOutput = `${e.stdout ?? ""}${e.stderr ?? ""}` || e.message;
  }
  const expected: GuestDataFile[] = [manifest.writeFile];
  if (manifest.afterFile) expected.push(manifest.afterFile);
  const files: GuestFileCheck[] = [];
  for (const f of expected) {
    const sha256 = await fileSha256(tools.debugfs, device, f.path);
    files.push({ path: f.path, expectedSha256: f.sha256, sha256, ok: sha256 === f.sha256 });
  }
  return { fsckClean, fsckOutput: fsckOutput.trim(), files, ok: fsckClean && files.every((f) => f.ok) };
}

async function fileSha256(debugfs: string, device: string, path: string): Promise<string | null> {
  // debugfs prints nothing on stdout (and an error on stderr) for a missing file; `stat` tells them apart.
  const stat = await run(debugfs, ["-R", `stat ${path}`, device], { maxBuffer: 1 << 20 });
  if (!/Inode:\s*\d+/.test(stat.stdout)) return null;
  const { stdout } = await run(debugfs, ["-R", `cat ${path}`, device], {
    encoding: "buffer",
    maxBuffer: 1 << 28,
  });
  return createHash("sha256").update(stdout).digest("hex");
}
