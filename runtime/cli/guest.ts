import { parseArgs } from "node:util";
import { CliError } from "./errors.ts";

export const USAGE = `usage: medic guest build [--out DIR] [--force] [--disk-mib N] [--filler-mib N]
  Builds the real Linux guest from Debian's i386 packages (needs apt, dpkg-deb, e2fsprogs; as root):
  DIR/vmlinuz (linux-image-686, unmodified), DIR/initrd.img, DIR/disk.img (MBR + ext4 root),
  DIR/manifest.json. Default DIR: .cache/guest. Cached: nothing is redone while the inputs are unchanged.`;

/** `medic guest build`: the kernel, initramfs and disk image of the real Linux guest. */
export async function guestCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== "build")
    throw new CliError(sub === undefined ? USAGE : `unknown guest command '${sub}'\n${USAGE}`);
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        out: { type: "string" },
        force: { type: "boolean" },
        "disk-mib": { type: "string" },
        "filler-mib": { type: "string" },
      },
    }));
  } catch (error) {
    throw new CliError(`${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  }
  const diskMiB = integer(values["disk-mib"], "--disk-mib", 16);
  const fillerMiB = integer(values["filler-mib"], "--filler-mib", 0);
  const { buildGuest } = await import("../guest/linux/build.ts");
  const out = typeof values.out === "string" ? values.out : ".cache/guest";
  try {
    const guest = await buildGuest({
      outDir: out,
      force: values.force === true,
      diskMiB,
      fillerMiB,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(
      [
        `kernel  ${guest.vmlinuz} (${guest.manifest.kernelPackage} ${guest.manifest.kernelVersion}, unmodified)`,
        `initrd  ${guest.initrd} (busybox ${guest.manifest.busyboxVersion}, ${guest.manifest.modules.length} modules)`,
        `disk    ${guest.disk} (${guest.manifest.diskBytes / 1048576} MiB, root fs at sector ${guest.manifest.partitionStartLba})`,
        `boot:   npx medic deploy --guest linux --image ${guest.disk} --disk DISK [--mode bare|passthrough|streaming] [--console]`,
        "",
      ].join("\n"),
    );
    return 0;
  } catch (error) {
    throw new CliError(
      `cannot build the guest: ${error instanceof Error ? error.message : String(error)}`,
      1,
    );
  }
}

function integer(value: string | boolean | undefined, flag: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== "string" || !Number.isInteger(n) || n < min) {
    throw new CliError(`${flag} needs a whole number of at least ${min}, not '${String(value)}'`);
  }
  return n;
}
