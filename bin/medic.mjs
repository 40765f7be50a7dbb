#!/usr/bin/env node
// Runs medic's TypeScript sources directly (tsx), so `npm ci` is the only set-up step.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../runtime/cli/main.ts");
const code = await main(process.argv.slice(2));
// A finished command exits even if a timer is still pending (a retry back-off, a device that
// stopped answering); stdout is drained first.
process.stdout.write("", () => process.exit(code));
