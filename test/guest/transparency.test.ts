import { describe, expect, it } from "vitest";
import { checkLbaPattern } from "../../runtime/block/index.ts";
import { AhciGuestDriver, type AhciGuestDriverOptions } from "../../runtime/guest/driver.ts";
import { Machine } from "../../runtime/machine.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { patternDisk, recordingPlatform } from "./helpers.ts";

/** Start-up, I/O at depth 1 and 8, a flush, an error and its recovery; returns all the guest saw. */
async function session(mediated: boolean, options: AhciGuestDriverOptions): Promise<string[]> {
  const clock = new VirtualClock();
  const machine = new Machine({ disks: [patternDisk(8192)], mediated, clock, latencyMs: 1 });
  const platform = recordingPlatform(machine);
  const driver = await AhciGuestDriver.open(platform, options);
  expect(checkLbaPattern(await driver.read(10, 8), 10)).toBe(-1);
  await driver.write(20, new Uint8Array(4096).fill(3));
  await driver.flush();
  await Promise.all(Array.from({ length: 8 }, (_, i) => driver.read(i * 64, 16)));
  await expect(driver.read(8190, 4)).rejects.toThrow(/PxTFD 0x00001451/);
  expect((await driver.read(20, 8)).every((b) => b === 3)).toBe(true);
  await driver.close();
  return platform.log;
}

describe("mediated passthrough is invisible to the guest", () => {
  it.each([
    { name: "defaults", options: {} },
    { name: "libahci style", options: { coalesceInterrupts: false, batchDoorbells: false } },
  ])(
    "every register value and interrupt the guest sees is the same as on bare metal ($name)",
    async ({ options }) => {
      const bare = await session(false, options);
      const mediated = await session(true, options);
      expect(bare.length).toBeGreaterThan(140);
      expect(mediated).toEqual(bare);
    },
  );

  it("follows the libahci bring-up order", async () => {
    const machine = new Machine({ disks: [patternDisk(64)] });
    const platform = recordingPlatform(machine);
    await AhciGuestDriver.open(platform);
    const log = platform.log;
    const first = (pattern: RegExp, from = 0): number => {
      const i = log.findIndex((line, n) => n >= from && pattern.test(line));
      expect(i, `${pattern} after line ${from}`).toBeGreaterThanOrEqual(from);
      return i;
    };
    // CAP, HBA reset and its wait, CLB/FB, FRE, PxIE, GHC.IE, COMRESET, SSTS, TFD, SIG, ST, IDENTIFY.
    let at = first(/^R 0 /);
    at = first(/^W 4 80000001$/, at);
    at = first(/^R 4 80000000$/, at); // HR self-cleared (AE reads 1: CAP.SAM)
    at = first(/^W 100 /, at);
    at = first(/^W 108 /, at);
    at = first(/^W 118 1[02]$/, at); // FRE
    at = first(/^W 114 7840007f$/, at);
    at = first(/^W 4 80000002$/, at);
    at = first(/^W 12c 301$/, at);
    at = first(/^W 12c 300$/, at);
    at = first(/^R 128 133$/, at);
    at = first(/^R 120 /, at);
    at = first(/^R 124 101$/, at);
    at = first(/^W 118 401[13]$/, at); // ST
    at = first(/^W 138 1$/, at); // IDENTIFY in slot 0
    at = first(/^IRQ 1$/, at);
    // The interrupt handler: IS, PxIS read and cleared, PxCI, IS cleared (section B, non-NCQ).
    expect(log.slice(at + 1, at + 6)).toEqual(["R 8 1", "R 110 2", "W 110 2", "R 138 0", "W 8 1"]);
  });
});
