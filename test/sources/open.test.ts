import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockSource } from "../../runtime/block/types.ts";
import {
  FileSource,
  HttpSource,
  NbdSource,
  openSource,
  type SourceEvent,
} from "../../runtime/sources/index.ts";
import { makeRandomImage, makeTempDir, NbdkitServer, NginxServer, removeDir } from "./servers.ts";

let dir: string;
let path: string;
let image: Buffer;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  dir = await makeTempDir("medic-open-");
  path = join(dir, "disk.img");
  image = await makeRandomImage(path, 2 * 1024 * 1024);
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  await removeDir(dir);
});

async function check(source: BlockSource): Promise<void> {
  cleanups.push(() => source.close());
  expect(source.sectors).toBe(4096);
  expect(Buffer.from(await source.read(77, 300)).equals(image.subarray(77 * 512, 377 * 512))).toBe(true);
}

describe("openSource", () => {
  it("opens a plain path and a file:// URL as FileSource", async () => {
    const a = await openSource(path);
    expect(a).toBeInstanceOf(FileSource);
    await check(a);
    const b = await openSource(pathToFileURL(path).href);
    expect(b).toBeInstanceOf(FileSource);
    await check(b);
  });

  it("opens nbd:// and nbd+unix:// as NbdSource, passing options and events", async () => {
    const tcp = await NbdkitServer.start(dir, {
      plugin: "file",
      pluginArgs: [`file=${path}`],
      filters: ["error"],
      filterArgs: ["error-pread-rate=50%"],
    });
    cleanups.push(() => tcp.stop());
    const events: SourceEvent[] = [];
    const a = await openSource(tcp.url(), {
      retries: 30,
      retryDelayMs: 1,
      onEvent: (e) => events.push(e),
      maxInFlight: 3,
    });
    expect(a).toBeInstanceOf(NbdSource);
    await check(a);
    for (let i = 0; i < 20; i++) await a.read(i * 8, 8);
    expect(events.some((e) => e.kind === "retry")).toBe(true);

    const unix = await NbdkitServer.start(dir, { plugin: "file", pluginArgs: [`file=${path}`], unix: true });
    cleanups.push(() => unix.stop());
    const b = await openSource(unix.url());
    expect(b).toBeInstanceOf(NbdSource);
    await check(b);
  });

  it("opens http:// as HttpSource", async () => {
    const nginx = await NginxServer.start(join(dir, "nginx"));
    cleanups.push(() => nginx.stop());
    const { copyFile } = await import("node:fs/promises");
    await copyFile(path, join(nginx.www, "disk.img"));
    const source = await openSource(nginx.url("disk.img"), { maxInFlight: 2 });
    expect(source).toBeInstanceOf(HttpSource);
    await check(source);
  });

  it("refuses unknown schemes and empty specs clearly", async () => {
    await expect(openSource("ftp://example.com/disk.img")).rejects.toMatchObject({
      code: "config",
      message: /unsupported image source scheme "ftp:\/\/"/,
    });
    await expect(openSource("")).rejects.toMatchObject({ code: "config" });
    await expect(openSource("nbds://example.com/x")).rejects.toMatchObject({
      code: "config",
      message: /TLS/,
    });
  });
});
