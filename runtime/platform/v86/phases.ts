/**
 * Boot phases read off the guest console: when (in wall-clock ms since the emulator started) each
 * milestone of the Linux guest built by runtime/guest/linux was reached. No v86 dependency.
 */

export interface ConsoleLine {
  text: string;
  tMs: number;
  cpuMs?: number;
}

export interface BootPhases {
  /** SeaBIOS handed over to the kernel's real-mode setup ("Probing EDD", needs `earlyprintk`). */
  setupMs?: number;
  /**
   * First kernel log line on the console: with `earlyprintk` the kernel proper is running (after the
   * bzImage's XZ decompression); without it, the real console just registered (a few kernel-seconds on).
   */
  kernelMs?: number;
  /** "Run /init as init process". */
  initMs?: number;
  initramfsStartMs?: number;
  modulesLoadedMs?: number;
  rootDiskMs?: number;
  noRootDiskMs?: number;
  switchRootMs?: number;
  guestStartMs?: number;
  guestReadMs?: number;
  guestWroteMs?: number;
  guestReadyMs?: number;
  /** "reboot: Power down" / "reboot: System halted". */
  powerOffMs?: number;
  /** MEDIC-*-ERROR lines. */
  errors: string[];
}

const KERNEL_TS = /^\[\s*(\d+\.\d+)\]/;

/**
 * @param clock "wall": the lines' `tMs`; "cpu": their `cpuMs` (the emulator process's CPU time, which is
 *   what a boot costs on an idle host).
 */
export function bootPhases(lines: readonly ConsoleLine[], clock: "wall" | "cpu" = "wall"): BootPhases {
  const phases: BootPhases = { errors: [] };
  const first = (re: RegExp): number | undefined => {
    const l = lines.find((x) => re.test(x.text));
    return l === undefined ? undefined : clock === "cpu" ? l.cpuMs : l.tMs;
  };
  phases.setupMs = first(/^Probing EDD/);
  phases.kernelMs = first(KERNEL_TS);
  phases.initMs = first(/Run \/init as init process/);
  phases.initramfsStartMs = first(/^MEDIC-INITRAMFS start/);
  phases.modulesLoadedMs = first(/^MEDIC-INITRAMFS modules loaded/);
  phases.rootDiskMs = first(/^MEDIC-INITRAMFS root disk/);
  phases.noRootDiskMs = first(/^MEDIC-INITRAMFS no root disk/);
  phases.switchRootMs = first(/^MEDIC-INITRAMFS switch_root/);
  phases.guestStartMs = first(/^MEDIC-GUEST-START/);
  phases.guestReadMs = first(/^MEDIC-GUEST-READ /);
  phases.guestWroteMs = first(/^MEDIC-GUEST-WROTE/);
  phases.guestReadyMs = first(/^MEDIC-GUEST-READY/);
  phases.powerOffMs = first(/reboot: (Power down|System halted)/);
  phases.errors = lines.filter((l) => /^MEDIC-[A-Z]+-ERROR/.test(l.text)).map((l) => l.text);
  for (const k of Object.keys(phases) as (keyof BootPhases)[]) {
    if (phases[k] === undefined) delete phases[k];
  }
  return phases;
}

/** One line per phase, seconds with one decimal, for logs. */
export function formatBootPhases(p: BootPhases): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(p)) {
    if (typeof v === "number") parts.push(`${k.replace(/Ms$/, "")}=${(v / 1000).toFixed(1)}s`);
  }
  if (p.errors.length > 0) parts.push(`errors=${p.errors.length}`);
  return parts.join(" ");
}
