/**
 * Bugs found in the emulated controller (runtime/devices/ahci/controller.ts) and the register
 * spec while writing the guest driver. These tests FAIL until the controller is fixed; the guest
 * driver works around the first one (it reads the D2H register FIS when PxTFD shows no error).
 */
import { describe, expect, it } from "vitest";
import {
  HOST_BASE,
  HOST_CAP,
  HOST_CAP_SAM,
  HOST_GHC,
  HOST_GHC_AE,
  HOST_GHC_HR,
  PORT_IS,
  PORT_IS_TFES,
  PORT_SACT,
  PORT_TFD,
  portOffset,
} from "../../generated/ahci/index.ts";
import { AhciGuestDriver } from "../../runtime/guest/driver.ts";
import { Machine } from "../../runtime/machine.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { patternDisk } from "./helpers.ts";

describe("emulated AHCI controller: regressions", () => {
  it("keeps the error in PxTFD (and stops the queue) after an NCQ command fails", async () => {
    const clock = new VirtualClock();
    const machine = new Machine({ disks: [patternDisk(1024)], clock });
    // Polling every second of virtual time: the guest looks only after the device is done.
    const driver = await AhciGuestDriver.open(machine, {
      interrupts: false,
      pollIntervalMs: 1000,
      batchDoorbells: false,
    });
    const reads = [driver.read(0, 8), driver.read(2000, 8), driver.read(8, 8)]; // tags 0, 1 (bad), 2
    const settled = Promise.allSettled(reads);
    await machine.controller.idle();
    const regs = machine.controller.registers;
    expect(regs.get(portOffset(0, PORT_IS)) & PORT_IS_TFES).toBe(PORT_IS_TFES);
    // The failed command's status must stay visible to software while PxIS.TFES is set
    // (libahci reads it in its error handling). Today complete() of tag 2, which
    // runs after the failure, sets PxTFD back to 0x50 (DRDY, no ERR).
    expect(regs.get(portOffset(0, PORT_TFD)) & 0x01).toBe(0x01);
    // A device that reported an NCQ error aborts its other outstanding commands (SATA NCQ error
    // handling); today the controller still completes tag 2 and clears its PxSACT bit.
    expect(regs.get(portOffset(0, PORT_SACT)) & 0b110).toBe(0b110);
    await settled;
  });

  it("reads GHC.AE as 1 after an HBA reset when CAP.SAM is set", () => {
    const machine = new Machine({ disks: [patternDisk(64)] });
    const abar = machine.abar + HOST_BASE;
    expect(machine.mmioRead(abar + HOST_CAP, 4) & HOST_CAP_SAM).toBe(HOST_CAP_SAM);
    machine.mmioWrite(abar + HOST_GHC, 4, (HOST_GHC_AE | HOST_GHC_HR) >>> 0);
    // AHCI 1.3.1 3.1.2: with CAP.SAM = 1, GHC.AE is read-only and 1 (an AHCI-only HBA). The
    // register file resets GHC to 0 and treats AE as read-write (spec/ahci.med, GHC).
    expect((machine.mmioRead(abar + HOST_GHC, 4) & HOST_GHC_AE) >>> 0).toBe(HOST_GHC_AE >>> 0);
  });
});
