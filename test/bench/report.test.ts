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

/** Renders `html` in headless Chromium; returns what the probe script measured in the laid-out page. */
function measure(html: string, name: string) {
  const probe = `<pre id="verdict"></pre><script>
      const charts = [...document.querySelectorAll("svg.chart")].map((svg) => {
        const shapes = [...svg.querySelectorAll("rect.bar, path.series")];
        const visible = shapes.filter((s) => { const b = s.getBBox(); return b.width > 0 && b.height > 0; });
        const box = svg.getBoundingClientRect();
        const inside = (b) => b.x >= 0 && b.y >= 0 && b.x + b.width <= box.width + 0.5 && b.y + b.height <= box.height + 0.5;
        const rows = [...svg.querySelectorAll("g.row")].map((g) => ({
          label: g.dataset.label,
          parts: [...g.querySelectorAll("rect.bar")].map((r) => r.querySelector("title").textContent.split(":")[0]),
          inside: inside(g.getBBox()),
        }));
        const legend = [...svg.querySelectorAll("rect.legend")].every((r) => inside(r.getBBox()));
        return { id: svg.id, shapes: shapes.length, visible: visible.length, width: box.width, height: box.height, rows, legend };
      });
      document.getElementById("verdict").textContent = JSON.stringify(charts);
    </script>`;
  const page = join(dir, `${name}.html`);
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
  return JSON.parse(match![1]!.replace(/&quot;/g, '"').replace(/&amp;/g, "&")) as {
    id: string;
    shapes: number;
    visible: number;
    width: number;
    height: number;
    rows: { label: string; parts: string[]; inside: boolean }[];
    legend: boolean;
  }[];
}

/**
 * The HTML report rendered by a real browser: a script added to the page measures every chart's
 * shapes in the laid-out page, and Chromium's --dump-dom gives back what it found.
 */
describe("the benchmark's HTML report in headless Chromium", () => {
  const linux = {
    guest: "Linux 6.1.0-50-686 (unmodified, i386) on v86, medic's AHCI controller",
    link_mbit_s: 10,
    image_bytes: 64 * 2 ** 20,
    copy_ms: 53687,
    bare_boot_ms: 31500,
    bare_firmware_ms: 5700,
    streaming_ready_ms: 40100,
    streaming_firmware_ms: 5900,
    speedup: 2.12,
    bytes_redirected: 9 * 2 ** 20,
  };

  async function report(withLinux: boolean): Promise<string> {
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
    return renderHtml({
      result: { machine: { cpu: "test", cpus: 2 }, quick: true },
      paper: {
        image_bytes: 2 ** 35,
        copy_ms: 274877,
        boot_ms: 22571,
        overhead_link_ms: 10,
        overhead_mediator_ms: 5,
        speedup: 13.1,
      },
      realtime: {
        copy_ms: 17000,
        boot_ms: 22600,
        overhead_ms: 900,
        overhead_link_ms: 700,
        overhead_mediator_ms: 200,
      },
      linux: withLinux ? linux : null,
      timeline,
      io: { bare: { seq_mb_s: 900 }, during: { seq_mb_s: 800 }, after: { seq_mb_s: 890 } },
    } as unknown as Parameters<typeof renderHtml>[0]);
  }

  it("has the three charts, each with visible shapes, and the real Linux guest's bars in parts", async () => {
    expect(CHROMIUM, "chromium is not installed: apt-get install -y chromium").toBeDefined();
    const charts = measure(await report(true), "report");
    expect(charts.map((c) => c.id).sort()).toEqual(["os-startup", "throughput", "timeline"]);
    for (const chart of charts) {
      expect(chart.width).toBeGreaterThan(100);
      expect(chart.height).toBeGreaterThan(50);
      expect(chart.visible).toBeGreaterThan(0);
      expect(chart.visible).toBe(chart.shapes);
      expect(chart.legend).toBe(true);
      for (const row of chart.rows) expect(row.inside, `${chart.id}: ${row.label}`).toBe(true);
    }
    // The OS start-up chart: as in the paper's figure, copy-then-boot is image copy + firmware/boot + OS
    // boot, and streaming is firmware/boot + OS boot, for the real guest.
    const startup = charts.find((c) => c.id === "os-startup")!;
    expect(startup.rows.map((r) => r.label)).toEqual([
      "copy-then-boot (32 GiB, virtual clock)",
      "streaming with medic",
      "copy-then-boot (2 GiB, real time)",
      "streaming with medic (real time)",
      "copy-then-boot (Linux, 64 MiB, 10 Mbit/s)",
      "streaming with medic (Linux)",
    ]);
    expect(startup.rows[3]!.parts).toEqual(["OS boot", "link wait", "mediation"]);
    expect(startup.rows[4]!.parts).toEqual(["image copy", "firmware/boot", "OS boot"]);
    expect(startup.rows[5]!.parts).toEqual(["firmware/boot", "OS boot"]);
  }, 120_000);

  it("says so when the real Linux guest was left out (--no-linux)", async () => {
    expect(CHROMIUM, "chromium is not installed: apt-get install -y chromium").toBeDefined();
    const html = await report(false);
    expect(html).toContain("left out of this run (--no-linux)");
    const charts = measure(html, "no-linux");
    const startup = charts.find((c) => c.id === "os-startup")!;
    expect(startup.rows).toHaveLength(4);
    expect(startup.visible).toBe(startup.shapes);
  }, 120_000);
});
