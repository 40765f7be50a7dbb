/**
 * Builds the Linux guest that boots in the v86 platform: an unmodified Debian 12 i386 kernel
 * (`linux-image-686`), an initramfs that loads the kernel's own AHCI/SCSI/ext4 modules and switches to
 * /dev/sda1, and a small MBR-partitioned disk whose ext4 root holds busybox and data files of known
 * content that the guest reads, checks, writes and syncs.
 *
 * Everything comes from Debian packages through apt; the host needs (as root, on Debian 12):
 * `dpkg --add-architecture i386` (done here when missing), apt-get, dpkg-deb and mke2fs (e2fsprogs).
 * The cpio archive, its gzip and the MBR are written in TS; nothing is mounted.
 *
 * Outputs in `outDir` (default `.cache/guest`): `vmlinuz`, `initrd.img`, `disk.img`, `manifest.json`.
 * A rebuild is skipped when these exist and the manifest's input hash (the sources of this folder and the
 * build options) is unchanged; a cached build runs no apt command at all.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { type CpioEntry, writeCpio } from "./cpio.ts";
import { type ModInfo, moduleLoadOrder, normaliseModName, readModInfo } from "./modinfo.ts";
import { INITRAMFS_INIT, ROOTFS_INIT } from "./scripts.ts";

const run = promisify(execFile);

export interface BuildGuestOptions {
  /** Where the assets and the download cache go. Default `.cache/guest` (relative to the cwd). */
  outDir?: string;
  /** Progress lines (without trailing newline). Default: silent. */
  log?: (line: string) => void;
  /** Rebuild even when the cache is valid. */
  force?: boolean;
  /** Total disk size in MiB (one partition from LBA 2048 to the end). Default 64. */
  diskMiB?: number;
  /**
   * Compression of the initramfs. Default "none": the kernel then only copies the cpio into its tmpfs;
   * gunzipping the 4 MiB archive costs about 3 s of emulated boot time in v86.
   */
  initrdCompression?: "none" | "gzip";
  /**
   * More kernel modules to load in the initramfs (before the AHCI ones), e.g. `["ata_piix"]` to find the
   * root disk on v86's own IDE controller (a baseline that needs no medic device).
   */
  extraModules?: readonly string[];
  /** Where downloaded .deb files are kept (shared between output folders). Default `<outDir>/debs`. */
  debDir?: string;
  /**
   * MiB of data the guest never reads, stored in the root fs before the files its boot reads
   * (`/archive/unread.bin`, pseudo-random so it is really allocated). Like the rest of a real OS image,
   * it puts the boot's working set further into the disk, so a streaming deployment's sequential copy
   * reaches it later. Default 40 on the default 64 MiB disk (at most diskMiB - 24); 0 for none.
   */
  fillerMiB?: number;
}

export interface GuestAssets {
  vmlinuz: string;
  initrd: string;
  disk: string;
  fromCache: boolean;
  /** e.g. "6.1.0-50-686". */
  kernelRelease: string;
  /** Everything recorded about the build (package versions, modules, data files, sizes). */
  manifest: GuestManifest;
}

export interface GuestDataFile {
  /** Absolute path inside the guest's root fs, e.g. "/data/big-4m.bin". */
  path: string;
  bytes: number;
  sha256: string;
}

export interface GuestManifest {
  format: 1;
  inputHash: string;
  kernelPackage: string;
  kernelVersion: string;
  kernelRelease: string;
  busyboxVersion: string;
  modules: string[];
  diskBytes: number;
  partitionStartLba: number;
  partitionSectors: number;
  dataFiles: GuestDataFile[];
  /** The file the guest writes (a copy of /data/write-source.bin) and its expected content hash. */
  writeFile: GuestDataFile;
  /** The file the guest writes after the host's go (a copy of /data/mid-512k.bin). */
  afterFile: GuestDataFile;
  /** The unread data before the boot's files (see BuildGuestOptions.fillerMiB), if any. */
  fillerFile: { path: string; bytes: number } | null;
  /**
   * Disk sectors holding the files the root fs's init reads (busybox, /sbin/init, /data): the first and
   * the one past the last, from the file system's own block map (debugfs).
   */
  bootFiles: { firstLba: number; endLba: number };
  builtAt: string;
  buildMs: number;
}

/** Root modules for AHCI disks and an ext4 root; their dependency closure is computed from modinfo. */
export const ROOT_MODULES = [
  // Crypto providers that ext4 (crc32c) and the T10 PI code (crct10dif, crc64-rocksoft) ask the
  // crypto API for at run time; there is no modprobe in the initramfs, so load them first.
  "crc32c_generic",
  "crct10dif_generic",
  "crc64_rocksoft_generic",
  "ahci",
  "sd_mod",
  "ext4",
] as const;

/**
 * Busybox applets linked into /bin of both file systems. Debian's busybox runs applets from its shell
 * without links, but only by re-executing /proc/self/exe, which does not exist before /proc is mounted.
 */
export const APPLETS = [
  "sh",
  "mount",
  "umount",
  "cat",
  "cut",
  "echo",
  "grep",
  "wc",
  "rm",
  "cp",
  "ls",
  "mkdir",
  "sync",
  "sleep",
  "usleep",
  "insmod",
  "lsmod",
  "poweroff",
  "reboot",
  "switch_root",
  "sha256sum",
  "dmesg",
  "dd",
] as const;

export const PARTITION_START_LBA = 2048;
export const FILLER_PATH = "/archive/unread.bin";
const SECTOR = 512;

/** Build (or find in the cache) the guest assets. */
export async function buildGuest(options: BuildGuestOptions = {}): Promise<GuestAssets> {
  const outDir = resolve(options.outDir ?? ".cache/guest");
  const log = options.log ?? (() => {});
  const diskMiB = options.diskMiB ?? 64;
  const initrdCompression = options.initrdCompression ?? "none";
  const extraModules = [...(options.extraModules ?? [])];
  const fillerMiB = options.fillerMiB ?? Math.max(0, Math.min(40, diskMiB - 24));
  const paths = {
    vmlinuz: join(outDir, "vmlinuz"),
    initrd: join(outDir, "initrd.img"),
    disk: join(outDir, "disk.img"),
    manifest: join(outDir, "manifest.json"),
  };
  const inputHash = await computeInputHash({ diskMiB, initrdCompression, extraModules, fillerMiB });

  if (!options.force) {
    const cached = await readManifest(paths.manifest);
    if (
      cached &&
      cached.inputHash === inputHash &&
      existsSync(paths.vmlinuz) &&
      existsSync(paths.initrd) &&
      existsSync(paths.disk)
    ) {
      log(`guest: cached in ${outDir} (kernel ${cached.kernelRelease})`);
      return {
        vmlinuz: paths.vmlinuz,
        initrd: paths.initrd,
        disk: paths.disk,
        fromCache: true,
        kernelRelease: cached.kernelRelease,
        manifest: cached,
      };
    }
  }

  const started = Date.now();
  log(`guest: building in ${outDir}`);
  await mkdir(outDir, { recursive: true });
  const debDir = resolve(options.debDir ?? join(outDir, "debs"));
  await mkdir(debDir, { recursive: true });
  const work = join(outDir, `.work-${process.pid}-${Date.now()}`);
  await mkdir(work, { recursive: true });
  try {
    // 1. Packages.
    await ensureI386(log);
    const kernelPackage = await resolveKernelPackage(log);
    const kernelDeb = await download(`${kernelPackage}:i386`, debDir, log);
    const busyboxDeb = await download("busybox-static:i386", debDir, log);

    // 2. Unpack.
    const kdir = join(work, "kernel");
    const bdir = join(work, "busybox");
    log(`guest: dpkg-deb -x ${kernelDeb.file}`);
    await run("dpkg-deb", ["-x", kernelDeb.path, kdir], { maxBuffer: 1 << 24 });
    log(`guest: dpkg-deb -x ${busyboxDeb.file}`);
    await run("dpkg-deb", ["-x", busyboxDeb.path, bdir], { maxBuffer: 1 << 24 });
    const kernelRelease = await findKernelRelease(kdir);
    const vmlinuzSrc = join(kdir, "boot", `vmlinuz-${kernelRelease}`);
    const busybox = new Uint8Array(await readFile(join(bdir, "bin", "busybox")));

    // 3. Initramfs.
    const modRoot = await findModulesDir(kdir, kernelRelease);
    const { entries: modEntries, order } = await collectModules(
      modRoot,
      kernelRelease,
      [...extraModules, ...ROOT_MODULES],
      log,
    );
    const initScript = INITRAMFS_INIT.replace("@MODULES@", order.map((m) => m.path).join(" "));
    const entries: CpioEntry[] = [
      ...["bin", "sbin", "dev", "proc", "sys", "mnt", "mnt/root", "lib", "lib/modules", "tmp"].map(
        (path): CpioEntry => ({ kind: "dir", path }),
      ),
      { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
      { kind: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 },
      { kind: "chardev", path: "dev/ttyS0", major: 4, minor: 64, mode: 0o600 },
      { kind: "file", path: "bin/busybox", data: busybox, mode: 0o755 },
      ...APPLETS.map((a): CpioEntry => ({ kind: "symlink", path: `bin/${a}`, target: "busybox" })),
      { kind: "file", path: "init", data: new TextEncoder().encode(initScript), mode: 0o755 },
      ...modEntries,
    ];
    const cpio = writeCpio(entries);
    const initrdBytes = initrdCompression === "gzip" ? gzipSync(cpio, { level: 9 }) : cpio;
    log(
      `guest: initramfs ${order.length} modules, cpio ${kib(cpio.length)}` +
        (initrdCompression === "gzip" ? `, gzip ${kib(initrdBytes.length)}` : " (uncompressed)"),
    );

    // 4. Root file system and disk.
    const rootDir = join(work, "rootfs");
    const { dataFiles, writeSpec, afterSpec } = await populateRootfs(rootDir, busybox, fillerMiB);
    const diskBytes = diskMiB * 1024 * 1024;
    const partSectors = diskBytes / SECTOR - PARTITION_START_LBA;
    const fsImage = join(work, "rootfs.ext4");
    log(`guest: mke2fs -t ext4 -d rootfs (${Math.round((partSectors * SECTOR) / 1048576)} MiB partition)`);
    await run(
      "mke2fs",
      [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-L",
        "medic-root",
        "-U",
        "6d656469-632d-4775-9573-742d726f6f74",
        "-E",
        "root_owner=0:0,hash_seed=6d656469-632d-4775-9573-742d68617368",
        "-d",
        rootDir,
        fsImage,
        `${(partSectors * SECTOR) / 1024}k`,
      ],
      { env: { ...process.env, E2FSPROGS_FAKE_TIME: "1700000000", MKE2FS_DEVICE_SECTSIZE: "512" } },
    );
    const bootFiles = await bootFileSectors(fsImage, dataFiles);
    if (fillerMiB > 0) {
      log(
        `guest: ${fillerMiB} MiB unread in ${FILLER_PATH}; the boot's files are at sectors ` +
          `${bootFiles.firstLba}..${bootFiles.endLba} (${kib(bootFiles.firstLba * SECTOR)} into the disk)`,
      );
    }
    const fsBytes = new Uint8Array(await readFile(fsImage));
    if (fsBytes.length !== partSectors * SECTOR) {
      throw new Error(`mke2fs made ${fsBytes.length} bytes, expected ${partSectors * SECTOR}`);
    }
    const disk = new Uint8Array(diskBytes);
    disk.set(makeMbr(PARTITION_START_LBA, partSectors, 0x83), 0);
    disk.set(fsBytes, PARTITION_START_LBA * SECTOR);

    // 5. Publish atomically (temp names, then rename).
    const manifest: GuestManifest = {
      format: 1,
      inputHash,
      kernelPackage,
      kernelVersion: kernelDeb.version,
      kernelRelease,
      busyboxVersion: busyboxDeb.version,
      modules: order.map((m) => m.name),
      diskBytes,
      partitionStartLba: PARTITION_START_LBA,
      partitionSectors: partSectors,
      dataFiles,
      writeFile: writeSpec,
      afterFile: afterSpec,
      fillerFile: fillerMiB > 0 ? { path: FILLER_PATH, bytes: fillerMiB * 1024 * 1024 } : null,
      bootFiles,
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - started,
    };
    await writeFile(join(work, "vmlinuz"), await readFile(vmlinuzSrc));
    await writeFile(join(work, "initrd.img"), initrdBytes);
    await writeFile(join(work, "disk.img"), disk);
    for (const name of ["vmlinuz", "initrd.img", "disk.img"]) {
      await rename(join(work, name), join(outDir, name));
    }
    await writeFile(join(work, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    await rename(join(work, "manifest.json"), paths.manifest);
    log(
      `guest: done in ${((Date.now() - started) / 1000).toFixed(1)} s: vmlinuz ${kib((await stat(paths.vmlinuz)).size)}, ` +
        `initrd.img ${kib(initrdBytes.length)}, disk.img ${diskMiB} MiB (${dataFiles.length} data files, ` +
        `${kib(dataFiles.reduce((a, f) => a + f.bytes, 0))})`,
    );
    return {
      vmlinuz: paths.vmlinuz,
      initrd: paths.initrd,
      disk: paths.disk,
      fromCache: false,
      kernelRelease,
      manifest,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function kib(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1048576).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

async function computeInputHash(opts: {
  diskMiB: number;
  initrdCompression: string;
  extraModules: string[];
  fillerMiB: number;
}): Promise<string> {
  const h = createHash("sha256");
  h.update(JSON.stringify({ format: 1, ...opts }));
  const here = dirname(fileURLToPath(import.meta.url));
  for (const name of (await readdir(here)).filter((n) => n.endsWith(".ts")).sort()) {
    h.update(name);
    h.update(await readFile(join(here, name)));
  }
  return h.digest("hex");
}

async function readManifest(path: string): Promise<GuestManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(path, "utf8")) as GuestManifest;
    return m.format === 1 ? m : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------
// apt

async function ensureI386(log: (line: string) => void): Promise<void> {
  const { stdout } = await run("dpkg", ["--print-foreign-architectures"]);
  if (stdout.split(/\s+/).includes("i386")) return;
  log("guest: dpkg --add-architecture i386 && apt-get update");
  await run("dpkg", ["--add-architecture", "i386"]);
  await aptUpdate(log);
}

let updated = false;
/**
 * apt-get update, retried: Debian's mirrors are sometimes mid-sync and one index file fails
 * ("File has unexpected size"). apt keeps the indexes it did get, so after the last failed try
 * we go on and let the package lookups say what is really missing.
 */
async function aptUpdate(log: (line: string) => void): Promise<void> {
  if (updated) return;
  const tries = 3;
  for (let attempt = 1; attempt <= tries; attempt++) {
    log(`guest: apt-get update${attempt > 1 ? ` (try ${attempt} of ${tries})` : ""}`);
    try {
      await run("apt-get", ["update", "-q"], { maxBuffer: 1 << 24 });
      break;
    } catch (err) {
      const detail = String((err as { stderr?: string }).stderr ?? err)
        .split("\n")
        .filter((l) => l.startsWith("E:"))
        .join("; ");
      log(`guest: apt-get update failed: ${detail || String(err)}`);
      if (attempt < tries) await new Promise((r) => setTimeout(r, 5000 * attempt));
    }
  }
  updated = true;
}

/** linux-image-686 is a metapackage; return the versioned package it depends on. */
async function resolveKernelPackage(log: (line: string) => void): Promise<string> {
  const tryResolve = async (): Promise<string | undefined> => {
    try {
      const { stdout } = await run("apt-cache", ["depends", "linux-image-686:i386"]);
      return /Depends:\s*(linux-image-[0-9][^\s:]*-686)(?::i386)?/.exec(stdout)?.[1];
    } catch {
      return undefined;
    }
  };
  let pkg = await tryResolve();
  if (!pkg) {
    await aptUpdate(log);
    pkg = await tryResolve();
  }
  if (!pkg) throw new Error("cannot resolve linux-image-686:i386 (is the i386 architecture enabled?)");
  log(`guest: linux-image-686:i386 -> ${pkg}`);
  return pkg;
}

async function candidateVersion(pkg: string): Promise<string | undefined> {
  try {
    const { stdout } = await run("apt-cache", ["show", "--no-all-versions", pkg]);
    return /^Version:\s*(\S+)/m.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

/** apt-get download into `dir`, reusing an already downloaded .deb of the candidate version. */
async function download(
  pkg: string,
  dir: string,
  log: (line: string) => void,
): Promise<{ path: string; file: string; version: string }> {
  let version = await candidateVersion(pkg);
  if (!version) {
    await aptUpdate(log);
    version = await candidateVersion(pkg);
  }
  if (!version) throw new Error(`apt knows no package ${pkg}`);
  const name = pkg.replace(/:.*$/, "");
  const file = `${name}_${version.replace(/:/g, "%3a")}_i386.deb`;
  const path = join(dir, file);
  if (existsSync(path)) {
    log(`guest: using downloaded ${file}`);
    return { path, file, version };
  }
  const attempt = async (): Promise<void> => {
    log(`guest: apt-get download ${pkg}=${version}`);
    await run("apt-get", ["download", "-q", `${pkg}=${version}`], { cwd: dir, maxBuffer: 1 << 24 });
  };
  try {
    await attempt();
  } catch {
    await aptUpdate(log);
    version = (await candidateVersion(pkg)) ?? version;
    await attempt();
  }
  const finalFile = `${name}_${version.replace(/:/g, "%3a")}_i386.deb`;
  const finalPath = join(dir, finalFile);
  if (!existsSync(finalPath)) throw new Error(`apt-get download did not produce ${finalFile}`);
  return { path: finalPath, file: finalFile, version };
}

// ---------------------------------------------------------------------------------------------------
// kernel modules

async function findKernelRelease(kdir: string): Promise<string> {
  const boot = await readdir(join(kdir, "boot"));
  const v = boot.find((n) => n.startsWith("vmlinuz-"));
  if (!v) throw new Error("no boot/vmlinuz-* in the kernel package");
  return v.slice("vmlinuz-".length);
}

async function findModulesDir(kdir: string, release: string): Promise<string> {
  for (const base of ["lib/modules", "usr/lib/modules"]) {
    const p = join(kdir, base, release);
    if (existsSync(p)) return p;
  }
  throw new Error(`no modules directory for ${release}`);
}

async function walk(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await walk(dir, r)));
    else out.push(r);
  }
  return out;
}

const MODULE_RE = /\/([^/]+)\.ko(\.xz|\.zst|\.gz)?$/;

async function decompressModule(path: string, ext: string | undefined): Promise<Uint8Array> {
  if (!ext) return new Uint8Array(await readFile(path));
  const tool = ext === ".xz" ? "xz" : ext === ".zst" ? "zstd" : "gzip";
  const { stdout } = await run(tool, ["-dc", path], { encoding: "buffer", maxBuffer: 1 << 28 });
  return new Uint8Array(stdout);
}

async function collectModules(
  modRoot: string,
  release: string,
  roots: readonly string[],
  log: (line: string) => void,
): Promise<{ entries: CpioEntry[]; order: { name: string; path: string }[] }> {
  const files = new Map<string, { rel: string; ext: string | undefined }>();
  for (const rel of await walk(join(modRoot, "kernel"), "")) {
    const m = MODULE_RE.exec(`/${rel}`);
    if (m?.[1]) files.set(normaliseModName(m[1]), { rel: `kernel/${rel}`, ext: m[2] });
  }
  const builtin = new Set(
    existsSync(join(modRoot, "modules.builtin"))
      ? (await readFile(join(modRoot, "modules.builtin"), "utf8"))
          .split("\n")
          .map((l) => MODULE_RE.exec(`/${l}`)?.[1])
          .filter((n): n is string => !!n)
          .map(normaliseModName)
      : [],
  );
  const contents = new Map<string, Uint8Array>();
  const infos = new Map<string, ModInfo>();
  const lookup = (name: string): ModInfo | undefined => infos.get(name);
  // Load the infos lazily but synchronously-looking: read every candidate reachable from the roots.
  const pending = roots.map(normaliseModName);
  while (pending.length > 0) {
    const name = pending.pop()!;
    if (infos.has(name) || !files.has(name)) continue;
    const f = files.get(name)!;
    const bytes = await decompressModule(join(modRoot, f.rel), f.ext);
    const info = readModInfo(bytes);
    contents.set(name, bytes);
    infos.set(name, info);
    for (const d of [...info.depends, ...info.softPre]) pending.push(normaliseModName(d));
  }
  const { order, missing } = moduleLoadOrder(roots, lookup);
  for (const m of missing) {
    if (!builtin.has(m) && roots.map(normaliseModName).includes(m)) {
      log(`guest: warning: module ${m} is neither a module file nor built in`);
    }
  }
  const dirs = new Set<string>();
  const entries: CpioEntry[] = [];
  const result: { name: string; path: string }[] = [];
  for (const name of order) {
    const f = files.get(name)!;
    const rel = `${release}/${f.rel.replace(/\.(xz|zst|gz)$/, "")}`;
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = `lib/modules/${parts.slice(0, i).join("/")}`;
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ kind: "dir", path: d });
      }
    }
    entries.push({ kind: "file", path: `lib/modules/${rel}`, data: contents.get(name)! });
    result.push({ name, path: rel });
  }
  log(`guest: modules (load order): ${order.join(" ")}`);
  return { entries, order: result };
}

// ---------------------------------------------------------------------------------------------------
// root file system

/** Deterministic pseudo-random bytes (xorshift128). */
function patternBytes(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  const words = new Uint32Array(out.buffer, 0, n >>> 2);
  let x = seed | 0 || 1;
  let y = 362436069;
  let z = 521288629;
  let w = 88675123 ^ seed;
  for (let i = 0; i < words.length; i++) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = w ^ (w >>> 19) ^ (t ^ (t >>> 8));
    words[i] = w >>> 0;
  }
  for (let i = words.length * 4; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/** The data files of the root fs: a spread of sizes, about 8 MiB in all. */
export function dataFileSpecs(): { path: string; bytes: number; seed: number }[] {
  const specs = [
    { path: "/data/big-4m.bin", bytes: 4 * 1024 * 1024, seed: 1 },
    { path: "/data/mid-1m.bin", bytes: 1024 * 1024, seed: 2 },
    { path: "/data/mid-512k.bin", bytes: 512 * 1024, seed: 3 },
    { path: "/data/odd-100001.bin", bytes: 100001, seed: 4 },
    { path: "/data/write-source.bin", bytes: 768 * 1024 + 123, seed: 5 },
  ];
  for (let i = 0; i < 48; i++) {
    // 1 KiB .. ~46 KiB, some not a multiple of the block size.
    specs.push({
      path: `/data/small/f${String(i).padStart(2, "0")}.bin`,
      bytes: 1024 + i * 977,
      seed: 100 + i,
    });
  }
  return specs;
}

async function populateRootfs(
  rootDir: string,
  busybox: Uint8Array,
  fillerMiB: number,
): Promise<{ dataFiles: GuestDataFile[]; writeSpec: GuestDataFile; afterSpec: GuestDataFile }> {
  for (const d of ["bin", "sbin", "dev", "proc", "sys", "tmp", "mnt", "data/small"]) {
    await mkdir(join(rootDir, d), { recursive: true });
  }
  if (fillerMiB > 0) {
    // mke2fs -d adds a directory's entries in name order (e2fsprogs 1.47 scandir + alphasort), so
    // /archive is allocated before /bin, /data and /sbin; bootFileSectors checks where they went.
    await mkdir(join(rootDir, dirname(FILLER_PATH)), { recursive: true });
    await writeFile(join(rootDir, FILLER_PATH), patternBytes(0x5eed, fillerMiB * 1024 * 1024));
  }
  await writeFile(join(rootDir, "bin/busybox"), busybox, { mode: 0o755 });
  for (const a of APPLETS) await symlink("busybox", join(rootDir, "bin", a));
  await writeFile(join(rootDir, "sbin/init"), ROOTFS_INIT, { mode: 0o755 });
  const dataFiles: GuestDataFile[] = [];
  for (const spec of dataFileSpecs()) {
    const bytes = patternBytes(spec.seed, spec.bytes);
    await writeFile(join(rootDir, spec.path), bytes);
    dataFiles.push({ path: spec.path, bytes: spec.bytes, sha256: sha256(bytes) });
  }
  const sums = dataFiles.map((f) => `${f.sha256}  ${f.path}\n`).join("");
  await writeFile(join(rootDir, "data/SHA256SUMS"), sums);
  const src = dataFiles.find((f) => f.path === "/data/write-source.bin")!;
  const after = dataFiles.find((f) => f.path === "/data/mid-512k.bin")!;
  return {
    dataFiles,
    writeSpec: { path: "/medic-write.bin", bytes: src.bytes, sha256: src.sha256 },
    afterSpec: { path: "/medic-after.bin", bytes: after.bytes, sha256: after.sha256 },
  };
}

/** The disk sectors of the files the guest's init reads, from the file system's block map (debugfs). */
async function bootFileSectors(
  fsImage: string,
  dataFiles: readonly GuestDataFile[],
): Promise<{ firstLba: number; endLba: number }> {
  let first = Number.POSITIVE_INFINITY;
  let end = 0;
  const paths = ["/bin/busybox", "/sbin/init", "/data/SHA256SUMS", ...dataFiles.map((f) => f.path)];
  let stdout = "";
  for (const p of paths) stdout += `${(await run("debugfs", ["-R", `blocks ${p}`, fsImage])).stdout}\n`;
  for (const word of stdout.split(/\s+/)) {
    if (!/^\d+$/.test(word)) continue;
    const block = Number(word);
    first = Math.min(first, block);
    end = Math.max(end, block + 1);
  }
  if (!Number.isFinite(first)) throw new Error("debugfs found no blocks of the guest's files");
  const perBlock = 4096 / SECTOR;
  return { firstLba: PARTITION_START_LBA + first * perBlock, endLba: PARTITION_START_LBA + end * perBlock };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

// ---------------------------------------------------------------------------------------------------
// MBR

function chs(lba: number): [number, number, number] {
  const heads = 255;
  const sectors = 63;
  const c = Math.floor(lba / (heads * sectors));
  if (c > 1023) return [0xfe, 0xff, 0xff];
  const h = Math.floor(lba / sectors) % heads;
  const s = (lba % sectors) + 1;
  return [h, s | ((c >> 2) & 0xc0), c & 0xff];
}

/** A classic MBR with one primary partition (no boot code; the kernel is loaded by the platform). */
export function makeMbr(startLba: number, sectors: number, type: number): Uint8Array {
  const mbr = new Uint8Array(SECTOR);
  const dv = new DataView(mbr.buffer);
  dv.setUint32(440, 0x4944454d, true); // disk signature "MEDI"
  const e = 446;
  mbr[e] = 0x00; // not active
  mbr.set(chs(startLba), e + 1);
  mbr[e + 4] = type;
  mbr.set(chs(startLba + sectors - 1), e + 5);
  dv.setUint32(e + 8, startLba, true);
  dv.setUint32(e + 12, sectors, true);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}
