import { CliError } from "./errors.ts";

const USAGE = `medic — the MEDIator Compiler

usage:
  medic compile SPEC --out DIR [--check] [--emit-model]   compile a device spec to TypeScript
  medic check SPEC...                                     validate specs, print diagnostics
  medic replay TRACE... [--mode bare|passthrough|streaming] replay guest traces, check expectations
  medic deploy --image SRC --disk FILE [options]           stream an OS image while a guest boots
  medic manifest IMAGE [--block-size N]                   per-block SHA-256 of an image (for --manifest)
  medic guest build [--out DIR]                           build the real Linux guest (kernel, initrd, disk)
  medic bench [--quick] [--json FILE] [--html FILE] [--no-linux] [--no-fetch]
                                                          the paper's experiments, as ratios
  medic start                                             the main job on the embedded default
  medic help                                              this text
`;

type Command = (args: string[]) => Promise<number>;

// Commands load their modules on first use: `deploy` need not pay for the compiler's start-up.
const commands: Record<string, Command> = {
  compile: async (args) => (await import("./compile.ts")).compileCommand(args, "compile"),
  check: async (args) => (await import("./compile.ts")).compileCommand(args, "check"),
  replay: async (args) => (await import("./replay.ts")).replayCommand(args),
  deploy: async (args) => (await import("./deploy.ts")).deployCommand(args),
  manifest: async (args) => (await import("./manifest.ts")).manifestCommand(args),
  guest: async (args) => (await import("./guest.ts")).guestCommand(args),
  start: async (args) => (await import("./start.ts")).startCommand(args),
  bench: async (args) => (await import("./bench.ts")).benchCommand(args),
  help: async () => {
    process.stdout.write(USAGE);
    return 0;
  },
};

/** Commands with more options than the overview shows: their modules' own usage text. */
const detailedUsage: Record<string, () => Promise<string>> = {
  deploy: async () => (await import("./deploy.ts")).USAGE,
  bench: async () => (await import("./bench.ts")).USAGE,
  guest: async () => (await import("./guest.ts")).USAGE,
};

const isHelp = (arg: string) => arg === "--help" || arg === "-h";

/** `medic COMMAND --help`: the command's usage on stdout. */
async function commandHelp(name: string): Promise<string> {
  const detailed = detailedUsage[name];
  if (detailed) return `${await detailed()}\n`;
  const lines = USAGE.split("\n").filter(
    (line) => line.startsWith(`  medic ${name} `) || line === `  medic ${name}`,
  );
  return `usage:\n${lines.join("\n")}\n`;
}

/** Runs one CLI invocation and returns its exit code; errors become messages, never stack traces. */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name !== undefined && isHelp(name)) return commands.help!([]);
  if (name !== undefined && commands[name] !== undefined && rest.some(isHelp)) {
    process.stdout.write(await commandHelp(name));
    return 0;
  }
  const command = name === undefined ? undefined : commands[name];
  if (command === undefined) {
    process.stderr.write(name === undefined ? USAGE : `medic: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  try {
    return await command(rest);
  } catch (error) {
    if (error instanceof CliError) {
      process.stderr.write(`medic ${name}: ${error.message}\n`);
      return error.exitCode;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`medic ${name}: internal error: ${message}\n`);
    if (process.env.MEDIC_DEBUG) process.stderr.write(`${error instanceof Error ? error.stack : ""}\n`);
    return 70;
  }
}
