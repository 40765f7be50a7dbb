import type {
  osStartupLinux,
  osStartupRealtime,
  osStartupVirtual,
  Timeline,
  throughput,
} from "./experiments.ts";

interface ReportData {
  readonly result: {
    readonly machine: { readonly cpu: string; readonly cpus: number };
    readonly quick: boolean;
  };
  readonly paper: Awaited<ReturnType<typeof osStartupVirtual>>;
  readonly realtime: Awaited<ReturnType<typeof osStartupRealtime>>;
  /** The real Linux guest; null when the bench ran with --no-linux. */
  readonly linux: Awaited<ReturnType<typeof osStartupLinux>> | null;
  readonly timeline: Timeline;
  readonly io: Awaited<ReturnType<typeof throughput>>;
}

/**
 * A self-contained page (inline SVG, no script from the network): the OS start-up bars broken
 * into their parts, the timeline of blocks local with the guest's I/O and the de-virtualization
 * moment, and guest throughput bare / during / after the deployment.
 */
export function renderHtml(d: ReportData): string {
  const copy = "#c0504d";
  const boot = "#4f81bd";
  const firmware = "#8064a2";
  const link = "#f79646";
  const mediation = "#9bbb59";
  const rows: Bar[] = [
    {
      label: `copy-then-boot (${d.paper.image_bytes / 2 ** 30} GiB, virtual clock)`,
      parts: [
        { name: "image copy", value: d.paper.copy_ms / 1000, color: copy },
        { name: "OS boot", value: d.paper.boot_ms / 1000, color: boot },
      ],
    },
    {
      label: "streaming with medic",
      parts: [
        { name: "OS boot", value: d.paper.boot_ms / 1000, color: boot },
        { name: "link wait", value: Math.max(0, d.paper.overhead_link_ms) / 1000, color: link },
        { name: "mediation", value: Math.max(0, d.paper.overhead_mediator_ms) / 1000, color: mediation },
      ],
    },
    {
      label: "copy-then-boot (2 GiB, real time)",
      parts: [
        { name: "image copy", value: d.realtime.copy_ms / 1000, color: copy },
        { name: "OS boot", value: d.realtime.boot_ms / 1000, color: boot },
      ],
    },
    {
      label: "streaming with medic (real time)",
      parts: [
        { name: "OS boot", value: d.realtime.boot_ms / 1000, color: boot },
        { name: "link wait", value: Math.max(0, d.realtime.overhead_link_ms) / 1000, color: link },
        { name: "mediation", value: Math.max(0, d.realtime.overhead_mediator_ms) / 1000, color: mediation },
      ],
    },
  ];
  const l = d.linux;
  if (l !== null) {
    // As in the paper's figure: image copy, then firmware/boot (SeaBIOS, the kernel's real-mode set-up and
    // decompression: power-on to the kernel's first line), then the OS boot (to the guest's ready marker).
    rows.push(
      {
        label: `copy-then-boot (Linux, ${l.image_bytes / 2 ** 20} MiB, ${l.link_mbit_s} Mbit/s)`,
        parts: [
          { name: "image copy", value: l.copy_ms / 1000, color: copy },
          { name: "firmware/boot", value: l.bare_firmware_ms / 1000, color: firmware },
          { name: "OS boot", value: (l.bare_boot_ms - l.bare_firmware_ms) / 1000, color: boot },
        ],
      },
      {
        label: "streaming with medic (Linux)",
        parts: [
          { name: "firmware/boot", value: l.streaming_firmware_ms / 1000, color: firmware },
          {
            name: "OS boot",
            value: (l.streaming_ready_ms - l.streaming_firmware_ms) / 1000,
            color: boot,
          },
        ],
      },
    );
  }
  const startup = bars("os-startup", "OS ready (seconds): copy-then-boot vs streaming with medic", rows);
  const linuxNote =
    l === null
      ? "<p>The real Linux guest was left out of this run (--no-linux).</p>"
      : `<p>Real Linux guest (${escapeHtml(l.guest)}): OS ready ${l.speedup.toFixed(2)}× sooner streaming than copy-then-boot over ${l.link_mbit_s} Mbit/s (both real time; ${(l.bytes_redirected / 2 ** 20).toFixed(1)} MiB served to the guest from the image before it was local).</p>`;
  const timeline = timelineChart(d.timeline);
  const io = bars(
    "throughput",
    "Guest sequential reads (MB/s): bare, during the deployment, after de-virtualization",
    [
      { label: "bare", parts: [{ name: "MB/s", value: d.io.bare.seq_mb_s, color: "#4f81bd" }] },
      {
        label: "during deployment",
        parts: [{ name: "MB/s", value: d.io.during.seq_mb_s, color: "#f79646" }],
      },
      {
        label: "after de-virtualization",
        parts: [{ name: "MB/s", value: d.io.after.seq_mb_s, color: "#9bbb59" }],
      },
    ],
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medic benchmark report</title>
<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}svg{background:#fafafa;border:1px solid #ddd}
h2{font-size:1.1em;margin-top:2em}.legend span{display:inline-block;margin-right:1em}</style></head>
<body><h1>medic: streaming deployment benchmarks</h1>
<p>Machine: ${escapeHtml(d.result.machine.cpu)} × ${d.result.machine.cpus}${d.result.quick ? " (quick run)" : ""}.
OS start-up ${d.paper.speedup.toFixed(1)}× sooner than copy-then-boot at the paper's setting (the paper reports 8.6×).</p>
${startup}
${linuxNote}
${timeline}
${io}
</body></html>
`;
}

interface Bar {
  readonly label: string;
  readonly parts: readonly { readonly name: string; readonly value: number; readonly color: string }[];
}

function bars(id: string, title: string, rows: readonly Bar[]): string {
  const width = 900;
  const labelWidth = 300;
  const rowHeight = 34;
  const height = rows.length * rowHeight + 50;
  const max = Math.max(...rows.map((r) => r.parts.reduce((n, p) => n + p.value, 0)), 1e-9);
  const scale = (width - labelWidth - 80) / max;
  const body = rows
    .map((row, i) => {
      const y = 20 + i * rowHeight;
      let x = labelWidth;
      const rects = row.parts
        .map((p) => {
          const w = Math.max(1, p.value * scale);
          const rect = `<rect class="bar" x="${x.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="22" fill="${p.color}"><title>${escapeHtml(p.name)}: ${p.value.toFixed(2)}</title></rect>`;
          x += w;
          return rect;
        })
        .join("");
      const total = row.parts.reduce((n, p) => n + p.value, 0);
      return `<g class="row" data-label="${escapeHtml(row.label)}"><text x="${labelWidth - 8}" y="${y + 16}" text-anchor="end" font-size="12">${escapeHtml(row.label)}</text>${rects}<text x="${(x + 6).toFixed(1)}" y="${y + 16}" font-size="12">${total.toFixed(1)}</text></g>`;
    })
    .join("\n");
  const entries = [...new Map(rows.flatMap((r) => r.parts.map((p) => [p.name, p.color] as const))).entries()];
  // The legend starts under the bars and moves left when it has more entries than fit there.
  const step = 130;
  const legendX = Math.max(20, Math.min(labelWidth, width - 20 - entries.length * step));
  const legend = entries
    .map(
      ([name, color], i) =>
        `<rect class="legend" x="${legendX + i * step}" y="${height - 22}" width="12" height="12" fill="${color}"/><text x="${legendX + i * step + 16}" y="${height - 12}" font-size="12">${escapeHtml(name)}</text>`,
    )
    .join("");
  return `<h2>${escapeHtml(title)}</h2>
<svg id="${id}" class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(title)}">
${body}
${legend}
</svg>`;
}

function timelineChart(t: Timeline): string {
  const width = 900;
  const height = 320;
  const left = 60;
  const bottom = 40;
  const endMs = Math.max(...t.timeline.map((p) => p.t), t.devirtualizedMs ?? 0, 1);
  const total = Math.max(...t.timeline.map((p) => p.localBytes), 1);
  const x = (ms: number) => left + (ms / endMs) * (width - left - 20);
  const y = (bytes: number) => height - bottom - (bytes / total) * (height - bottom - 20);
  const line = t.timeline
    .map((p, i) => `${i === 0 ? "M" : "L"}${x(p.t).toFixed(1)},${y(p.localBytes).toFixed(1)}`)
    .join(" ");
  const io = t.guestIo
    .map(
      (r) =>
        `<line class="io" x1="${x(r.t).toFixed(1)}" x2="${x(r.t).toFixed(1)}" y1="${height - bottom}" y2="${height - bottom + 8}" stroke="${r.op === "write" ? "#c0504d" : "#4f81bd"}"/>`,
    )
    .join("");
  const devirt =
    t.devirtualizedMs === null
      ? ""
      : `<line id="devirt" x1="${x(t.devirtualizedMs).toFixed(1)}" x2="${x(t.devirtualizedMs).toFixed(1)}" y1="20" y2="${height - bottom}" stroke="#9bbb59" stroke-dasharray="4 3"/><text x="${(x(t.devirtualizedMs) - 4).toFixed(1)}" y="16" text-anchor="end" font-size="12">de-virtualized at ${(t.devirtualizedMs / 1000).toFixed(1)} s</text>`;
  const ready =
    t.osReadyMs === null
      ? ""
      : `<line x1="${x(t.osReadyMs).toFixed(1)}" x2="${x(t.osReadyMs).toFixed(1)}" y1="20" y2="${height - bottom}" stroke="#4f81bd" stroke-dasharray="2 2"/><text x="${(x(t.osReadyMs) + (x(t.osReadyMs) > width - 160 ? -4 : 4)).toFixed(1)}" y="30" text-anchor="${x(t.osReadyMs) > width - 160 ? "end" : "start"}" font-size="12">OS ready at ${(t.osReadyMs / 1000).toFixed(1)} s</text>`;
  return `<h2>Blocks local over time (2 GiB over 1 Gbit/s, recorded boot as the guest; ticks: guest reads and writes)</h2>
<svg id="timeline" class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="blocks local over time">
<line x1="${left}" y1="${height - bottom}" x2="${width - 20}" y2="${height - bottom}" stroke="#888"/>
<line x1="${left}" y1="20" x2="${left}" y2="${height - bottom}" stroke="#888"/>
<text x="${left}" y="${height - 8}" font-size="12">0 s</text><text x="${width - 20}" y="${height - 8}" text-anchor="end" font-size="12">${(endMs / 1000).toFixed(1)} s</text>
<text x="${left - 6}" y="26" text-anchor="end" font-size="12">${(total / 2 ** 30).toFixed(1)} GiB</text>
<path class="series" d="${line}" fill="none" stroke="#f79646" stroke-width="2"/>
${io}
${devirt}
${ready}
</svg>`;
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
