#!/usr/bin/env node
// Runs medic's TypeScript sources directly (tsx), so `npm ci` is the only set-up step.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../runtime/cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
