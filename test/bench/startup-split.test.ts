import { describe, expect, it } from "vitest";
import { osStartupVirtual } from "../../bench/experiments.ts";

describe("os start-up on the virtual clock", () => {
  it("splits the streaming overhead into a link part and a mediator part, neither negative", async () => {
    const r = await osStartupVirtual({ quick: true, log: () => {} });
    expect(r.boot_ms).toBeGreaterThan(0);
    // Streaming cannot beat a bare boot from a full local disk, nor a mediated boot from one.
    expect(r.streaming_ready_ms).toBeGreaterThanOrEqual(r.boot_ms);
    expect(r.overhead_mediator_ms).toBeGreaterThanOrEqual(0);
    expect(r.overhead_link_ms).toBeGreaterThanOrEqual(0);
    expect(r.overhead_link_ms + r.overhead_mediator_ms).toBeCloseTo(r.overhead_ms, 6);
    expect(r.speedup).toBeCloseTo(r.copy_then_boot_ms / r.streaming_ready_ms, 9);
    expect(r.speedup).toBeGreaterThan(1);
  }, 60_000);
});
