import { createHash } from "node:crypto";
import { open as openFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockError } from "../../runtime/block/types.ts";
import { FileSource } from "../../runtime/sources/file.ts";
import {
  blockCount,
  blockDigest,
  blockSpan,
  buildManifest,
  parseManifest,
  serializeManifest,
  verifyBlock,
} from "../../runtime/sources/manifest.ts";
import { NbdSource } from "../../runtime/sources/nbd.ts";
import { makeRandomImage, makeTempDir, NbdkitServer, removeDir } from "./servers.ts";

const BLOCK = 64 * 1024;
const IMAGE_BYTES = 1024 * 1024 + 3 * 512; // 16 whole blocks and a 3-sector tail

let dir: string;
let path: string;
let image: Buffer;

beforeAll(async () => {
  dir = await makeTempDir("medic-manifest-");
  path = join(dir, "disk.img");
  image = await makeRandomImage(path, IMAGE_BYTES);
});

afterAll(async () => {
  await removeDir(dir);
});

const sha = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

describe("block manifest", () => {
  it("builds one SHA-256 per block, the last one short", async () => {
    const source = await FileSource.open(path);
    const manifest = await buildManifest(source, BLOCK, { concurrency: 3 });
    await source.close();
    expect(manifest.sectors).toBe(IMAGE_BYTES / 512);
    expect(blockCount(manifest.sectors, BLOCK)).toBe(17);
    for (let i = 0; i < 17; i++) {
      expect(blockDigest(manifest, i)).toBe(
        sha(image.subarray(i * BLOCK, Math.min(IMAGE_BYTES, (i + 1) * BLOCK))),
      );
    }
    expect(blockSpan(manifest, 16)).toEqual({ lba: 16 * 128, count: 3 });
    expect(() => blockSpan(manifest, 17)).toThrow(BlockError);
  });

  it("serializes to the v1 text format and parses back", async () => {
    const source = await FileSource.open(path);
    const manifest = await buildManifest(source, BLOCK);
    await source.close();
    const text = serializeManifest(manifest);
    const lines = text.trimEnd().split("\n");
    expect(lines[0]).toBe(`medic-manifest v1 block_size=${BLOCK} sectors=${IMAGE_BYTES / 512}`);
    expect(lines).toHaveLength(18);
    expect(lines[1]).toBe(sha(image.subarray(0, BLOCK)));
    const parsed = parseManifest(text);
    expect(parsed.blockSize).toBe(BLOCK);
    expect(parsed.sectors).toBe(manifest.sectors);
    expect(Buffer.from(parsed.digests).equals(Buffer.from(manifest.digests))).toBe(true);
  });

  it("verifies good blocks and detects a corrupted one", async () => {
    const source = await FileSource.open(path);
    const manifest = parseManifest(serializeManifest(await buildManifest(source, BLOCK)));
    await source.close();
    // Corrupt one byte of block 5 on disk.
    const handle = await openFile(path, "r+");
    await handle.write(Buffer.from([image[5 * BLOCK + 1234]! ^ 0x01]), 0, 1, 5 * BLOCK + 1234);
    await handle.close();
    const corrupted = await FileSource.open(path);
    try {
      const bad: number[] = [];
      for (let i = 0; i < 17; i++) {
        const { lba, count } = blockSpan(manifest, i);
        if (!verifyBlock(manifest, i, await corrupted.read(lba, count))) bad.push(i);
      }
      expect(bad).toEqual([5]);
      // Wrong length never verifies.
      expect(verifyBlock(manifest, 16, await corrupted.read(16 * 128, 2))).toBe(false);
    } finally {
      await corrupted.close();
      const fix = await openFile(path, "r+");
      await fix.write(image.subarray(5 * BLOCK + 1234, 5 * BLOCK + 1235), 0, 1, 5 * BLOCK + 1234);
      await fix.close();
    }
  });

  it("a manifest built over NBD equals the one built from the file", async () => {
    const server = await NbdkitServer.start(dir, { plugin: "file", pluginArgs: [`file=${path}`] });
    try {
      const nbd = await NbdSource.open(server.url());
      const overNbd = serializeManifest(await buildManifest(nbd, BLOCK));
      await nbd.close();
      const file = await FileSource.open(path);
      const fromFile = serializeManifest(await buildManifest(file, BLOCK));
      await file.close();
      expect(overNbd).toBe(fromFile);
    } finally {
      await server.stop();
    }
  });

  it("rejects malformed manifests clearly", () => {
    const good = `medic-manifest v1 block_size=512 sectors=2\n${"a".repeat(64)}\n${"b".repeat(64)}\n`;
    expect(parseManifest(good).sectors).toBe(2);
    expect(() => parseManifest("hello\n")).toThrow(/not a medic manifest/);
    expect(() => parseManifest(good.replace("block_size=512", "block_size=500"))).toThrow(/multiple of 512/);
    expect(() => parseManifest(good.replace(`${"b".repeat(64)}\n`, ""))).toThrow(/need 2 digests, found 1/);
    expect(() => parseManifest(good.replace("b".repeat(64), "B".repeat(64)))).toThrow(/line 3/);
  });
});
