import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { renderHtml } from "../../bench/html.ts";
import { runScenario } from "../../bench/scenario.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
const dir = mkdtempSync(join(tmpdir(), "medic-report-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * The HTML report rendered by a real browser: a script added to the page measures every chart's
 * shapes in the laid-out page, and Chromium's --dump-dom gives back what it found.
 */
describe("the benchmark's HTML report in headless Chromium", () => {
  it("has the three charts, each with visible shapes", async () => {
    expect(CHROMIUM, "chromium is not installed: apt-get install -y chromium").toBeDefined();
    // A real (small) deployment on the virtual clock feeds the timeline.
    const timeline = await runScenario({
      clock: new VirtualClock(),
      imageSectors: 4 * 1024 * 1024,
      pattern: "zero",
      linkBytesPerSecond: 2e9,
      latencyMs: 0.1,
      workload: "boot",
      thinkTimeScale: 0,
      sampleEveryMs: 10,
    });
    expect(timeline.timeline.length).toBeGreaterThan(3);
    const html = renderHtml({
      result: { machine: { cpu: "test", cpus: 2 }, quick: true },
      paper: {
        image_bytes: 2 ** 35,
        copy_ms: 274877,
        boot_ms: 22571,
        overhead_link_ms: 10,
        overhead_mediator_ms: 5,
        speedup: 13.1,
      },
      realtime: { copy_ms: 17000, boot_ms: 22600, overhead_ms: 900 },
      timeline,
      io: { bare: { seq_mb_s: 900 }, during: { seq_mb_s: 800 }, after: { seq_mb_s: 890 } },
    } as unknown as Parameters<typeof renderHtml>[0]);
    const probe = `<pre id="verdict"></pre><script>
      const charts = [...document.querySelectorAll("svg.chart")].map((svg) => {
        const shapes = [...svg.querySelectorAll("rect.bar, path.series")];
        const visible = shapes.filter((s) => { const b = s.getBBox(); return b.width > 0 && b.height > 0; });
        const box = svg.getBoundingClientRect();
        return { id: svg.id, shapes: shapes.length, visible: visible.length, width: box.width, height: box.height };
      });
      document.getElementById("verdict").textContent = JSON.stringify(charts);
    </script>`;
    const page = join(dir, "report.html");
    writeFileSync(page, html.replace("</body>", `${probe}</body>`));
    const run = spawnSync(
      CHROMIUM!,
      [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        `--user-data-dir=${join(dir, "profile")}`,
        "--virtual-time-budget=2000",
        "--dump-dom",
        `file://${page}`,
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
    const match = /<pre id="verdict">(.*?)<\/pre>/s.exec(run.stdout);
    expect(match, `chromium printed no verdict: ${run.stderr.slice(0, 500)}`).not.toBeNull();
    const charts = JSON.parse(match![1]!.replace(/&quot;/g, '"')) as {
      id: string;
      shapes: number;
      visible: number;
      width: number;
      height: number;
    }[];
    expect(charts.map((c) => c.id).sort()).toEqual(["os-startup", "throughput", "timeline"]);
    for (const chart of charts) {
      expect(chart.width).toBeGreaterThan(100);
      expect(chart.height).toBeGreaterThan(50);
      expect(chart.visible).toBeGreaterThan(0);
      expect(chart.visible).toBe(chart.shapes);
    }
  }, 120_000);
});
