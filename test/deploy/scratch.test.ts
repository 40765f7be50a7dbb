import { it } from "vitest";
import { AhciGuestDriver } from "../../runtime/guest/driver.ts";
import { VirtualClock } from "../../runtime/vmx/clock.ts";
import { DiskModel, describeMismatch, randomData, streamingSetup } from "./helpers.ts";

it("repro", async () => {
  const clock = new VirtualClock();
  const s = streamingSetup({ sectors: 4096, clock, blockBytes: 90112, backgroundRate: 1048576, fetchDepth: 1, fetchBlocks: 3, readAhead: 0 });
  const driver = await AhciGuestDriver.open(s.machine, { ncq: false, queueDepth: 1 });
  const med = s.machine.mediator!;
  const origIssue = med.issueOwn.bind(med);
  (med as any).issueOwn = (port: number, c: any, urgent?: boolean) => {
    const t = clock.now();
    console.log(`own ${c.op} ${c.lba}+${c.sectors} urgent=${urgent} at ${t}`);
    return origIssue(port, c, urgent).then((r: any) => { console.log(`own done ${c.op} ${c.lba}+${c.sectors} -> ${JSON.stringify({ok:r.ok,error:r.error})}`); return r; });
  };
  s.engine.start();
  const model = new DiskModel(4096);
  const log = (m: string) => console.log(m);
  const p1 = driver.read(0, 1).then(() => log("read0 done"));
  const data = randomData(1, 512);
  const p2 = driver.write(1024, data).then(() => { log("write done"); model.write(1024, data); });
  const p3 = driver.read(4095, 2).then(() => log("beyond ok?!"), (e) => log(`beyond: ${e.message}`));
  await Promise.all([p1, p2, p3]);
  await driver.read(0, 1);
  await clock.sleep(1);
  await s.engine.finished();
  const disk = await s.local.read(0, 4096);
  console.log(describeMismatch(disk, model.expected(0, 4096), 0));
  console.log(s.engine.stats, med.counters);
});
