import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { assertSameBytes, FETCH_DEFAULTS, fetchMarkdown, measureFetch } from "../../bench/fetch.ts";

/**
 * The fetch benchmark at toy size against real nbdkit, nbdcopy and qemu-img: the result's shape
 * and sanity only. Its speed is what the benchmark itself reports, not something to assert here.
 */
describe("fetch benchmark (medic against nbdcopy and qemu-img, from nbdkit)", () => {
  it("measures every copier and each sweep row, each copy verified byte for byte", async () => {
    const lines: string[] = [];
    const r = await measureFetch({
      imageBytes: 16 * 1024 * 1024,
      reps: 1,
      sweep: [FETCH_DEFAULTS, { ...FETCH_DEFAULTS, block_bytes: 1024 * 1024, fetch_blocks: 1 }],
      sweepReps: 1,
      warmUpBytes: 40 * 1024 * 1024,
      log: (line) => lines.push(line),
    });
    expect(r.image_bytes).toBe(16 * 1024 * 1024);
    expect(r.warm_ups).toBe(3); // 40 MiB of 16 MiB deployments
    expect(r.medic_first_mb_s).toBeGreaterThan(0);
    expect(lines.join("\n")).toMatch(/warm-up deployments: \d+, \d+, \d+ MB\/s/);
    for (const rate of [r.medic_mb_s, r.nbdcopy_mb_s, r.qemu_img_mb_s]) {
      expect(Number.isFinite(rate)).toBe(true);
      expect(rate).toBeGreaterThan(0);
    }
    expect(r.runs_mb_s.medic).toHaveLength(1);
    expect(r.runs_mb_s.nbdcopy).toHaveLength(1);
    expect(r.runs_mb_s.qemu_img).toHaveLength(1);
    expect(r.ratio_vs_nbdcopy).toBeCloseTo(r.medic_mb_s / r.nbdcopy_mb_s, 9);
    expect(r.ratio_vs_qemu_img).toBeCloseTo(r.medic_mb_s / r.qemu_img_mb_s, 9);
    expect(r.ratio_vs_best).toBeCloseTo(Math.min(r.ratio_vs_nbdcopy, r.ratio_vs_qemu_img), 9);
    expect(r.defaults).toEqual(FETCH_DEFAULTS);
    expect(r.sweep).toHaveLength(2);
    for (const row of r.sweep) {
      expect(row.mb_s).toBeGreaterThan(0);
      expect(row.runs_mb_s).toHaveLength(1);
      for (const key of [
        "fetch_depth",
        "fetch_blocks",
        "block_bytes",
        "nbd_max_in_flight",
        "nbd_request_bytes",
      ]) {
        expect(row[key as keyof typeof row]).toBeGreaterThan(0);
      }
    }
    expect(r.sweep).toContain(r.best);
    expect(r.best.mb_s).toBe(Math.max(...r.sweep.map((row) => row.mb_s)));
    // Plain JSON, as `medic bench` writes it.
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
    expect(fetchMarkdown(r)).toContain("| medic (defaults)");
    expect(lines.length).toBeGreaterThan(0);
  }, 30_000);

  const dir = mkdtemp(join(tmpdir(), "medic-fetch-test-"));
  afterAll(async () => rm(await dir, { recursive: true, force: true }));

  it("throws when a copy differs from the image", async () => {
    const a = join(await dir, "a");
    const b = join(await dir, "b");
    const data = Buffer.alloc(3 * 1024 * 1024, 7);
    await writeFile(a, data);
    await writeFile(b, data);
    await assertSameBytes(a, b);
    data[2 * 1024 * 1024 + 5] = 8;
    await writeFile(b, data);
    await expect(assertSameBytes(a, b)).rejects.toThrow(/differs .* at byte 2097157/);
    await writeFile(b, data.subarray(0, 1024));
    await expect(assertSameBytes(a, b)).rejects.toThrow(/1024 bytes/);
  });
});
