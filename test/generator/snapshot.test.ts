/**
 * What the generator writes, byte for byte.
 *
 *  - Drift: compiling spec/ahci.med must give exactly the files checked in under generated/ahci/.
 *    When this fails after a deliberate change to the generator or the spec, regenerate with
 *
 *      npm run generate
 *
 *    and review the diff of generated/ahci/ before committing it.
 *
 *  - Snapshot: the output of a second, non-AHCI spec (test/fixtures/specs/queue-device.med) is
 *    kept in test/fixtures/generator/queue-device/, one FILE.snap per generated FILE
 *    (registers.ts.snap, ...). The .snap suffix keeps biome and the project's `tsc -p .` from
 *    treating generated code as hand-written source. After a deliberate change, regenerate with
 *
 *      UPDATE_SNAPSHOTS=1 npx vitest run test/generator
 *
 *    and review every changed .snap file by eye before committing.
 *
 * Also: compiling is deterministic, every file carries the do-not-edit header naming its spec,
 * the output type-checks under strict settings (`tsc --noEmit` on a temporary tsconfig), and no
 * generated TypeScript uses `any`.
 */

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { compileSpec, type GeneratedFile } from "../../generator/compile.ts";
import { AHCI_SPEC, compileFile, QUEUE_SPEC, root, tempDir, writeFiles } from "./helpers.ts";

const update = process.env.UPDATE_SNAPSHOTS === "1";
const generatedDir = join(root, "generated/ahci");
const snapshotDir = join(root, "test/fixtures/generator/queue-device");
const SNAP = ".snap";

function filesOf(spec: string): readonly GeneratedFile[] {
  const result = compileFile(spec);
  expect(result.diagnostics, `${spec} compiles without diagnostics`).toEqual([]);
  expect(result.files.length).toBeGreaterThan(0);
  return result.files;
}

const ahciFiles = filesOf(AHCI_SPEC);
const queueFiles = filesOf(QUEUE_SPEC);

describe("generated/ahci/ is what the generator makes of spec/ahci.med (run `npm run generate`)", () => {
  it("has exactly the files the compiler emits", () => {
    expect(readdirSync(generatedDir).sort()).toEqual(ahciFiles.map((f) => f.path).sort());
  });

  for (const f of ahciFiles) {
    it(`generated/ahci/${f.path} is up to date`, () => {
      const onDisk = readFileSync(join(generatedDir, f.path), "utf8");
      // A boolean first, so the failure names the file before the (long) diff.
      expect(onDisk === f.content, `generated/ahci/${f.path} differs from the compiler's output`).toBe(true);
      expect(onDisk).toBe(f.content);
    });
  }
});

describe("snapshot of the queue-device spec's output (UPDATE_SNAPSHOTS=1 to regenerate)", () => {
  if (update) {
    mkdirSync(snapshotDir, { recursive: true });
    for (const name of readdirSync(snapshotDir)) if (name.endsWith(SNAP)) rmSync(join(snapshotDir, name));
    for (const f of queueFiles) writeFileSync(join(snapshotDir, f.path + SNAP), f.content);
  }

  it("has a snapshot directory", () => {
    expect(
      existsSync(snapshotDir),
      `${snapshotDir} is missing: run UPDATE_SNAPSHOTS=1 npx vitest run test/generator`,
    ).toBe(true);
  });

  it("has exactly one snapshot per generated file", () => {
    const snaps = existsSync(snapshotDir)
      ? readdirSync(snapshotDir)
          .filter((n) => n.endsWith(SNAP))
          .map((n) => n.slice(0, -SNAP.length))
          .sort()
      : [];
    expect(snaps).toEqual(queueFiles.map((f) => f.path).sort());
  });

  it("emits the files of a device without a mediator, in a fixed order", () => {
    expect(queueFiles.map((f) => f.path)).toEqual([
      "registers.ts",
      "structs.ts",
      "commands.ts",
      "index.ts",
      "reference.md",
    ]);
  });

  for (const f of queueFiles) {
    it(`${f.path} matches ${f.path}${SNAP} byte for byte`, () => {
      const path = join(snapshotDir, f.path + SNAP);
      expect(existsSync(path), `${path} is missing`).toBe(true);
      const snapshot = readFileSync(path);
      const actual = Buffer.from(f.content, "utf8");
      expect(actual.equals(snapshot), `${f.path} differs from its snapshot`).toBe(true);
      expect(f.content).toBe(snapshot.toString("utf8"));
    });
  }
});

describe("determinism and headers", () => {
  it("compiling twice gives the same bytes", () => {
    for (const spec of [AHCI_SPEC, QUEUE_SPEC]) {
      const again = compileFile(spec).files;
      const first = spec === AHCI_SPEC ? ahciFiles : queueFiles;
      expect(again.map((f) => f.path)).toEqual(first.map((f) => f.path));
      again.forEach((f, i) => {
        expect(f.content === first[i]!.content, `${spec}: ${f.path} changed between two compilations`).toBe(
          true,
        );
      });
    }
  });

  it("every generated file starts with the do-not-edit header naming the spec", () => {
    for (const [spec, files] of [
      [AHCI_SPEC, ahciFiles],
      [QUEUE_SPEC, queueFiles],
    ] as const) {
      for (const f of files) {
        const header = f.path.endsWith(".md")
          ? [
              `<!-- Generated by medic from ${spec}. DO NOT EDIT. -->`,
              "<!-- Change the spec and run `npx medic compile` instead. -->",
            ]
          : [
              `// Generated by medic from ${spec}. DO NOT EDIT.`,
              "// Change the spec and run `npx medic compile` instead.",
            ];
        expect(f.content.split("\n").slice(0, 2), `${spec}: ${f.path}`).toEqual(header);
      }
    }
  });

  it("names the spec as given: another file name changes only the header lines", () => {
    const renamed = compileAs(QUEUE_SPEC, "elsewhere/device.med");
    expect(renamed.map((f) => f.path)).toEqual(queueFiles.map((f) => f.path));
    renamed.forEach((f, i) => {
      const original = queueFiles[i]!.content.split("\n");
      const lines = f.content.split("\n");
      expect(lines[0]).toContain("elsewhere/device.med");
      expect(lines.slice(2)).toEqual(original.slice(2));
    });
  });

  it("every file ends with exactly one newline and has no trailing whitespace or tabs", () => {
    for (const f of [...ahciFiles, ...queueFiles]) {
      expect(f.content.endsWith("\n") && !f.content.endsWith("\n\n"), f.path).toBe(true);
      expect(f.content.includes("\r"), f.path).toBe(false);
      if (f.path.endsWith(".ts")) {
        expect(/[ \t]+$/m.test(f.content), `${f.path}: trailing whitespace`).toBe(false);
        expect(f.content.includes("\t"), `${f.path}: tab`).toBe(false);
      }
    }
  });
});

/** The source of `spec` compiled under another file name. */
function compileAs(spec: string, fileName: string): readonly GeneratedFile[] {
  const result = compileSpec(readFileSync(join(root, spec), "utf8"), { fileName });
  expect(result.diagnostics).toEqual([]);
  return result.files;
}

describe("the generated TypeScript is strict and typed", () => {
  const dirs: { remove(): void }[] = [];
  afterAll(() => {
    for (const d of dirs) d.remove();
  });

  const NO_ANY = /:\s*any\b|\bas\s+any\b|<\s*any\s*>|\bany\[\]/;

  it("uses no `any` (`: any`, `as any`, `<any>`) and no @ts-ignore / @ts-nocheck", () => {
    for (const [label, files] of [
      ["ahci", ahciFiles],
      ["queue-device", queueFiles],
    ] as const) {
      for (const f of files.filter((x) => x.path.endsWith(".ts"))) {
        const hit = f.content.split("\n").find((line) => NO_ANY.test(line));
        expect(hit, `${label}/${f.path} uses any: ${hit}`).toBeUndefined();
        expect(/@ts-(ignore|nocheck|expect-error)/.test(f.content), `${label}/${f.path}`).toBe(false);
      }
    }
  });

  it("the `any` check itself catches each form", () => {
    for (const bad of ["let x: any = 1;", "f(x as any);", "const y = <any>z;", "let a: any[] = [];"])
      expect(NO_ANY.test(bad), bad).toBe(true);
    for (const good of ["// many things", "const company = 1;", "anyway(x);"])
      expect(NO_ANY.test(good), good).toBe(false);
  });

  /** Writes `files` to a fresh temporary directory and runs `tsc --noEmit` on them (strict). */
  function typecheck(
    label: string,
    files: readonly GeneratedFile[],
  ): { status: number | null; output: string } {
    const dir = tempDir(`typecheck-${label}`);
    dirs.push(dir);
    writeFiles(dir.path, files);
    writeFileSync(join(dir.path, "package.json"), `${JSON.stringify({ type: "module" })}\n`);
    const tsconfig = {
      compilerOptions: {
        target: "ES2022",
        module: "ESNext",
        moduleResolution: "Bundler",
        lib: ["ES2022"],
        types: [],
        strict: true,
        noImplicitOverride: true,
        noFallthroughCasesInSwitch: true,
        noUnusedLocals: true,
        noUnusedParameters: true,
        noImplicitReturns: true,
        allowImportingTsExtensions: true,
        noEmit: true,
        skipLibCheck: true,
      },
      include: ["*.ts"],
    };
    writeFileSync(join(dir.path, "tsconfig.json"), `${JSON.stringify(tsconfig, null, 2)}\n`);
    const tsc = spawnSync(
      process.execPath,
      [join(root, "node_modules/typescript/bin/tsc"), "--noEmit", "-p", join(dir.path, "tsconfig.json")],
      { cwd: root, encoding: "utf8", timeout: 120_000 },
    );
    expect(tsc.error).toBeUndefined();
    return { status: tsc.status, output: `${tsc.stdout}${tsc.stderr}` };
  }

  for (const [label, files] of [
    ["queue-device", queueFiles],
    ["ahci", ahciFiles],
  ] as const) {
    it(`the ${label} output passes tsc --noEmit (strict, no unused locals or parameters)`, () => {
      const result = typecheck(label, files);
      expect(result.output).toBe("");
      expect(result.status).toBe(0);
    });
  }

  it("the type check is not vacuous: a type error in generated code makes tsc fail", () => {
    const broken = queueFiles.map((f) =>
      f.path === "structs.ts" ? { ...f, content: `${f.content}\nexport const wrong: number = "text";\n` } : f,
    );
    const result = typecheck("broken", broken);
    expect(result.status).not.toBe(0);
    expect(result.output).toMatch(/structs\.ts.*TS2322/);
  });

  // u64 members decode as bigint. A spec that uses one where a number is expected must be
  // rejected by the checker, or compile to code that still type-checks.
  const queueSource = readFileSync(join(root, QUEUE_SPEC), "utf8");
  const u64Cases: [string, string, string][] = [
    [
      "a value made of bits of a u64 member",
      'value NLB   = CDW12.NLB "0-based block count";',
      'value NLB   = CDW12.NLB "0-based block count";\n  value META = MPTR[20:0] "low metadata pointer bits";',
    ],
    [
      "a command whose LBA is a u64 member",
      "READ  = 0x02 read  lba SLBA count NLB + 1 dma;",
      "READ  = 0x02 read  lba SLBA count NLB + 1 dma;\n  COMPARE = 0x05 read lba MPTR count NLB + 1 dma;",
    ],
  ];
  for (const [title, from, to] of u64Cases) {
    it(`${title}: a diagnostic, or output that type-checks`, () => {
      expect(queueSource).toContain(from);
      const result = compileSpec(queueSource.replace(from, to), { fileName: "u64.med" });
      if (result.diagnostics.some((d) => d.severity === "error")) return;
      const checked = typecheck("u64", result.files);
      expect(checked.output).toBe("");
      expect(checked.status).toBe(0);
    });
  }
});
