/**
 * Per-block SHA-256 manifest of an image, so a deployment can verify every block it streams.
 *
 * Text format (UTF-8, "\n" line ends):
 *   medic-manifest v1 block_size=N sectors=M
 *   <64 lowercase hex digits>      one line per block, block 0 first
 * N is the block size in bytes (a multiple of 512), M the image size in sectors. The last block
 * covers the remaining sectors and may be shorter than N.
 */
import { createHash } from "node:crypto";
import { BlockError, type BlockSource, SECTOR_SIZE } from "../block/types.ts";

export interface Manifest {
  /** Block size in bytes (a multiple of 512). */
  readonly blockSize: number;
  /** Image size in sectors. */
  readonly sectors: number;
  /** SHA-256 digests, 32 bytes per block, back to back. */
  readonly digests: Uint8Array;
}

const HEADER = /^medic-manifest v1 block_size=(\d+) sectors=(\d+)$/;
const DIGEST = /^[0-9a-f]{64}$/;

function checkBlockSize(blockSize: number): void {
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0 || blockSize % SECTOR_SIZE !== 0) {
    throw new BlockError(
      `manifest block size ${blockSize} must be a positive multiple of ${SECTOR_SIZE}`,
      "config",
    );
  }
}

/** Number of blocks covering `sectors` sectors. */
export function blockCount(sectors: number, blockSize: number): number {
  return Math.ceil((sectors * SECTOR_SIZE) / blockSize);
}

/** The sectors block `index` covers. */
export function blockSpan(manifest: Manifest, index: number): { lba: number; count: number } {
  const perBlock = manifest.blockSize / SECTOR_SIZE;
  const blocks = blockCount(manifest.sectors, manifest.blockSize);
  if (!Number.isSafeInteger(index) || index < 0 || index >= blocks) {
    throw new BlockError(`manifest has blocks 0..${blocks - 1}; there is no block ${index}`, "range");
  }
  const lba = index * perBlock;
  return { lba, count: Math.min(perBlock, manifest.sectors - lba) };
}

export interface BuildManifestOptions {
  /** Blocks read at once (overlaps I/O with hashing). Default 4. */
  concurrency?: number;
  /** Called after each block. */
  onProgress?: (blocksDone: number, blocks: number) => void;
}

/** Reads the whole source and hashes each block. */
export async function buildManifest(
  source: BlockSource,
  blockSize: number,
  options: BuildManifestOptions = {},
): Promise<Manifest> {
  checkBlockSize(blockSize);
  const sectors = source.sectors;
  const blocks = blockCount(sectors, blockSize);
  const digests = new Uint8Array(blocks * 32);
  const manifest: Manifest = { blockSize, sectors, digests };
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < blocks) {
      const index = next++;
      const { lba, count } = blockSpan(manifest, index);
      const data = await source.read(lba, count);
      digests.set(createHash("sha256").update(data).digest(), index * 32);
      options.onProgress?.(++done, blocks);
    }
  };
  const concurrency = Math.max(1, Math.min(options.concurrency ?? 4, blocks));
  await Promise.all(Array.from({ length: concurrency }, worker));
  return manifest;
}

/** Hex digest of block `index`. */
export function blockDigest(manifest: Manifest, index: number): string {
  blockSpan(manifest, index);
  return Buffer.from(manifest.digests.buffer, manifest.digests.byteOffset + index * 32, 32).toString("hex");
}

export function serializeManifest(manifest: Manifest): string {
  const blocks = blockCount(manifest.sectors, manifest.blockSize);
  const lines = [`medic-manifest v1 block_size=${manifest.blockSize} sectors=${manifest.sectors}`];
  for (let i = 0; i < blocks; i++) lines.push(blockDigest(manifest, i));
  return `${lines.join("\n")}\n`;
}

export function parseManifest(text: string): Manifest {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  const header = HEADER.exec(lines[0] ?? "");
  if (header === null) {
    throw new BlockError(
      `not a medic manifest: the first line must be "medic-manifest v1 block_size=N sectors=M", ` +
        `got ${JSON.stringify((lines[0] ?? "").slice(0, 80))}`,
      "config",
    );
  }
  const blockSize = Number(header[1]);
  const sectors = Number(header[2]);
  checkBlockSize(blockSize);
  if (!Number.isSafeInteger(sectors))
    throw new BlockError(`manifest: bad sector count ${header[2]}`, "config");
  const blocks = blockCount(sectors, blockSize);
  if (lines.length - 1 !== blocks) {
    throw new BlockError(
      `manifest: ${sectors} sectors in blocks of ${blockSize} bytes need ${blocks} digests, found ${lines.length - 1}`,
      "config",
    );
  }
  const digests = new Uint8Array(blocks * 32);
  for (let i = 0; i < blocks; i++) {
    const line = lines[i + 1]!;
    if (!DIGEST.test(line)) {
      throw new BlockError(
        `manifest line ${i + 2}: expected 64 lowercase hex digits, got ${JSON.stringify(line.slice(0, 80))}`,
        "config",
      );
    }
    digests.set(Buffer.from(line, "hex"), i * 32);
  }
  return { blockSize, sectors, digests };
}

/** True when `data` is exactly block `index` of the image the manifest was built from. */
export function verifyBlock(manifest: Manifest, index: number, data: Uint8Array): boolean {
  const { count } = blockSpan(manifest, index);
  if (data.length !== count * SECTOR_SIZE) return false;
  const digest = createHash("sha256").update(data).digest();
  return Buffer.compare(digest, manifest.digests.subarray(index * 32, index * 32 + 32)) === 0;
}
