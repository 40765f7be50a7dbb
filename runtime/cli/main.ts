export async function main(argv: string[]): Promise<number> {
  process.stdout.write(`medic: ${argv.join(" ")}\n`);
  return 0;
}
