// `npm install` builds medic's native helper (native/page_cache.c) with the node-gyp that npm
// bundles. It is optional: without it medic works the same, but a deployment fills the page cache
// with the image it writes (slower on machines whose fresh memory is expensive to touch).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const candidates = [
  process.env.npm_config_node_gyp,
  join(dirname(process.execPath), "../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js"),
].filter((path) => path !== undefined && existsSync(path));

if (candidates.length === 0) {
  warn("node-gyp was not found");
} else {
  // Node's own headers when they are installed beside it: no download (there may be no network).
  const prefix = join(dirname(process.execPath), "..");
  const nodedir =
    process.env.npm_config_nodedir ??
    (existsSync(join(prefix, "include/node/node_api.h")) ? prefix : undefined);
  const args = [candidates[0], "rebuild", ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
  const run = spawnSync(process.execPath, args, { cwd: here, encoding: "utf8" });
  if (run.status !== 0)
    warn(`node-gyp failed:\n${(run.stderr || run.stdout || "").trim().split("\n").slice(-15).join("\n")}`);
  else process.stdout.write("medic: built native/build/Release/medic_native.node (page-cache control)\n");
}

function warn(why) {
  process.stderr.write(
    `medic: the native page-cache helper was not built (${why}); medic works without it, but deployments keep the image's pages cached\n`,
  );
}
