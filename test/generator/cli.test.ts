/**
 * The CLI as a user runs it: `node bin/medic.mjs compile|check ...` in a child process, checking
 * exit codes and what goes to stdout and stderr (diagnostics as FILE:LINE:COL: error: with a
 * caret line, never a stack trace). The tests run concurrently: each starts its own process.
 */

import { spawn } from "node:child_process";
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { root, tempDir } from "./helpers.ts";

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function medic(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["bin/medic.mjs", ...args], {
      cwd: root,
      env: { ...process.env, MEDIC_DEBUG: "", NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const SLOW = 180_000;
const dirs: { remove(): void }[] = [];
afterAll(() => {
  for (const d of dirs) d.remove();
});

function scratch(name: string): string {
  const dir = tempDir(`cli-${name}`);
  dirs.push(dir);
  return dir.path;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function expectNoStack(run: Run): void {
  expect(run.stderr).not.toContain("    at ");
  expect(run.stdout).not.toContain("    at ");
  expect(run.stderr).not.toMatch(/internal error/);
}

describe.concurrent("medic compile --check", () => {
  it(
    "on the checked-in generated/ahci: exit 0, nothing on stdout",
    async () => {
      const run = await medic("compile", "spec/ahci.med", "--out", "generated/ahci", "--check");
      expect(run.stderr).toBe("");
      expect(run.stdout).toBe("");
      expect(run.code).toBe(0);
    },
    SLOW,
  );

  it(
    "on a copy with one file altered and one missing: exit 1, both files named",
    async () => {
      const out = join(scratch("stale"), "ahci");
      cpSync(join(root, "generated/ahci"), out, { recursive: true });
      const structs = join(out, "structs.ts");
      writeFileSync(structs, `${readFileSync(structs, "utf8")}// edited by hand\n`);
      rmSync(join(out, "reference.md"));
      const run = await medic("compile", "spec/ahci.med", "--out", out, "--check");
      expect(run.code).toBe(1);
      const output = run.stdout + run.stderr;
      expect(output).toContain(structs);
      expect(output).toContain(join(out, "reference.md"));
      expect(output).not.toContain(join(out, "registers.ts"));
      expectNoStack(run);
      // --check writes nothing: the edited file is still edited, the missing one still missing.
      expect(readFileSync(structs, "utf8").endsWith("// edited by hand\n")).toBe(true);
      expect(readdirSync(out)).not.toContain("reference.md");
    },
    SLOW,
  );
});

describe.concurrent("medic compile", () => {
  it(
    "writes exactly the checked-in files into a fresh directory",
    async () => {
      const out = join(scratch("out"), "ahci");
      const run = await medic("compile", "spec/ahci.med", "--out", out);
      expect(run.code).toBe(0);
      expect(run.stderr).toBe("");
      expect(run.stdout).toMatch(/^wrote 6 files to /);
      const expected = readdirSync(join(root, "generated/ahci")).sort();
      expect(readdirSync(out).sort()).toEqual(expected);
      for (const f of expected)
        expect(
          readFileSync(join(out, f), "utf8") === readFileSync(join(root, "generated/ahci", f), "utf8"),
          f,
        ).toBe(true);
    },
    SLOW,
  );

  it(
    "without --out: a one-line usage error, no stack trace",
    async () => {
      const run = await medic("compile", "spec/ahci.med");
      expect(run.code).not.toBe(0);
      expect(run.stderr).toMatch(/--out/);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
      expectNoStack(run);
    },
    SLOW,
  );
});

describe.concurrent("medic check", () => {
  it(
    "on spec/ahci.med: exit 0, nothing printed",
    async () => {
      const run = await medic("check", "spec/ahci.med");
      expect(run.stderr).toBe("");
      expect(run.stdout).toBe("");
      expect(run.code).toBe(0);
    },
    SLOW,
  );

  it(
    "on a broken spec: exit 1, FILE:LINE:COL: error: with the source line and a caret, no stack",
    async () => {
      const file = join(scratch("broken"), "broken.med");
      writeFileSync(
        file,
        [
          'device d "broken" { vendor = 0x1234; device = 0x5678; }',
          "",
          "block host @ 0 size 0x100 {",
          "  reg CAP @ 0x00 : rq {",
          "    S64A [31] = 1;",
          "  }",
          "}",
          "",
        ].join("\n"),
      );
      const run = await medic("check", file);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(new RegExp(`^${escapeRegExp(file)}:4:20: error: .*rq`, "m"));
      const lines = run.stderr.split("\n");
      const at = lines.findIndex((l) => l.startsWith(`${file}:4:20: error:`));
      expect(lines[at + 1]).toContain("reg CAP @ 0x00 : rq {");
      expect(lines[at + 2]).toMatch(/^\s*\^+\s*$/);
      // The caret sits under the error's column, in the quoted line's indentation.
      const quoted = lines[at + 1]!;
      const caret = lines[at + 2]!.indexOf("^");
      expect(quoted.slice(caret, caret + 2)).toBe("rq");
      expectNoStack(run);
    },
    SLOW,
  );

  it(
    "on several specs: each is checked, exit 1 if any fails",
    async () => {
      const dir = scratch("several");
      const bad = join(dir, "bad.med");
      writeFileSync(bad, "device d { vendor = 1; device = 2; }\nenum E { X = ; }\n");
      const run = await medic("check", "test/fixtures/specs/queue-device.med", bad);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(new RegExp(`^${escapeRegExp(bad)}:2:\\d+: error: `, "m"));
      expect(run.stderr).not.toContain("queue-device.med");
      expectNoStack(run);
    },
    SLOW,
  );

  it(
    "on a missing file: exit 1 with a clear message naming it",
    async () => {
      const missing = join(scratch("missing"), "does-not-exist.med");
      const run = await medic("check", missing);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr).toContain(missing);
      expect(run.stderr).toMatch(/cannot read|no such file|not found/i);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
      expectNoStack(run);
    },
    SLOW,
  );

  it(
    "on a directory: exit 1, no stack",
    async () => {
      const run = await medic("check", scratch("dir"));
      expect(run.code).toBe(1);
      expectNoStack(run);
    },
    SLOW,
  );

  it(
    "an unknown command: usage on stderr, non-zero exit",
    async () => {
      const run = await medic("frobnicate");
      expect(run.code).not.toBe(0);
      expect(run.stderr).toContain("unknown command 'frobnicate'");
      expect(run.stderr).toContain("usage:");
      expectNoStack(run);
    },
    SLOW,
  );

  it(
    "--help: the overview, or a command's own usage, on stdout with exit 0",
    async () => {
      const overview = await medic("--help");
      expect(overview.code).toBe(0);
      expect(overview.stdout).toContain("medic deploy --image SRC");
      const deploy = await medic("deploy", "--help");
      expect(deploy.code).toBe(0);
      // The deploy module's own text, which lists options the overview leaves out.
      expect(deploy.stdout).toContain("--give-up-after S");
      const replay = await medic("replay", "-h");
      expect(replay.code).toBe(0);
      expect(replay.stdout).toContain("medic replay TRACE...");
      expect(replay.stdout).not.toContain("medic deploy");
    },
    SLOW,
  );

  it(
    "deploy --full-rate-when-idle without --background-mbps: one line saying what it needs, exit 2",
    async () => {
      const run = await medic(
        "deploy",
        "--image",
        "x.raw",
        "--disk",
        "y.raw",
        "--full-rate-when-idle",
        "1000",
      );
      expect(run.code).toBe(2);
      expect(run.stderr.trim()).toBe(
        "medic deploy: --full-rate-when-idle lifts the --background-mbps limit: give that too",
      );
      expectNoStack(run);
    },
    SLOW,
  );
});
