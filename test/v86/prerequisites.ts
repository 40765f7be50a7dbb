/**
 * What the v86 tests need from the host. They never skip: a missing tool fails them with a message
 * that says what to install (`.ci/run` installs these itself).
 */
import { existsSync } from "node:fs";
import { SEABIOS_BIOS, SEABIOS_VGABIOS } from "../../runtime/platform/v86/machine.ts";

export function requireV86Prerequisites(): void {
  const missing: string[] = [];
  if (!existsSync(SEABIOS_BIOS) || !existsSync(SEABIOS_VGABIOS)) {
    missing.push(`${SEABIOS_BIOS} (apt-get install seabios)`);
  }
  const sbin = (name: string) => ["/usr/sbin", "/sbin"].some((d) => existsSync(`${d}/${name}`));
  for (const tool of ["mke2fs", "debugfs", "e2fsck"]) {
    if (!sbin(tool)) missing.push(`${tool} (apt-get install e2fsprogs)`);
  }
  for (const tool of ["apt-get", "dpkg", "dpkg-deb"]) {
    if (!["/usr/bin", "/bin"].some((d) => existsSync(`${d}/${tool}`)))
      missing.push(`${tool} (Debian's apt/dpkg)`);
  }
  if (missing.length > 0) {
    throw new Error(
      `the v86 tests need: ${missing.join(", ")}. The guest builder adds the i386 architecture and downloads ` +
        "the kernel and busybox itself (as root).",
    );
  }
}
