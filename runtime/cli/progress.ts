import type { DeployProgress } from "../deploy/session.ts";

/**
 * Deployment progress for people: a live bar on a terminal, plain lines elsewhere (CI logs,
 * pipes), at most one line per `lineEveryMs` or per 10 % of progress.
 */
export function progressPrinter(
  stream: NodeJS.WriteStream,
  lineEveryMs = 2000,
): {
  update(p: DeployProgress): void;
  done(): void;
} {
  const tty = stream.isTTY === true;
  let lastLineAt = Number.NEGATIVE_INFINITY;
  let lastTenth = -1;
  let lastPhase = "";
  let lastGuest: number | null = null;
  let previous: { atMs: number; bytes: number } | null = null;
  let rate = 0;

  return {
    update(p) {
      if (previous && p.atMs > previous.atMs) {
        // The link's rate: local bytes move in steps (a block is local once flushed).
        const instant = ((p.fetchedBytes - previous.bytes) / (p.atMs - previous.atMs)) * 1000;
        rate = rate === 0 ? instant : rate * 0.7 + instant * 0.3;
      }
      previous = { atMs: p.atMs, bytes: p.fetchedBytes };
      const fraction = p.totalBytes === 0 ? 1 : p.localBytes / p.totalBytes;
      const eta =
        rate > 0 && fraction < 1 ? `ETA ${formatMs(((p.totalBytes - p.localBytes) / rate) * 1000)}` : "";
      const guest = p.guestDoneAtMs === null ? "" : `guest ready at ${formatMs(p.guestDoneAtMs)}`;
      const text = [
        `${formatBytes(p.localBytes)} / ${formatBytes(p.totalBytes)} local`,
        `${formatBytes(rate)}/s`,
        eta,
        p.phase,
        guest,
      ]
        .filter(Boolean)
        .join("  ");
      if (tty) {
        const width = 30;
        const filled = Math.round(fraction * width);
        stream.write(
          `\r\x1b[2K[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(fraction * 100).toFixed(1).padStart(5)}%  ${text}`,
        );
        return;
      }
      const tenth = Math.floor(fraction * 10);
      const news = p.phase !== lastPhase || p.guestDoneAtMs !== lastGuest || tenth !== lastTenth;
      if (!news && performance.now() - lastLineAt < lineEveryMs) return;
      lastLineAt = performance.now();
      lastTenth = tenth;
      lastPhase = p.phase;
      lastGuest = p.guestDoneAtMs;
      stream.write(`[${formatMs(p.atMs)}] ${(fraction * 100).toFixed(1)}%  ${text}\n`);
    },
    done() {
      if (tty) stream.write("\n");
    },
  };
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}
