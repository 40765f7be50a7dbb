import { parseArgs } from "node:util";
import { buildManifest, serializeManifest } from "../sources/manifest.ts";
import { openSource } from "../sources/open.ts";
import { CliError } from "./errors.ts";

/** `medic manifest IMAGE --block-size N`: per-block SHA-256 of an image, on stdout. */
export async function manifestCommand(args: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(args);
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
  const [image, ...rest] = parsed.positionals;
  if (image === undefined || rest.length > 0)
    throw new CliError("usage: medic manifest IMAGE [--block-size N] > image.manifest");
  const blockSize = Number(parsed.values["block-size"] ?? 65536);
  if (!Number.isInteger(blockSize) || blockSize <= 0 || blockSize % 512 !== 0) {
    throw new CliError(
      `--block-size must be a positive multiple of 512, not '${parsed.values["block-size"]}'`,
    );
  }
  let source: Awaited<ReturnType<typeof openSource>>;
  try {
    source = await openSource(image);
  } catch (error) {
    throw new CliError(
      `cannot open the image ${image}: ${error instanceof Error ? error.message : String(error)}`,
      1,
    );
  }
  try {
    const manifest = await buildManifest(source, blockSize);
    process.stdout.write(serializeManifest(manifest));
    return 0;
  } finally {
    await source.close();
  }
}

function parse(args: string[]) {
  return parseArgs({ args, allowPositionals: true, options: { "block-size": { type: "string" } } });
}
