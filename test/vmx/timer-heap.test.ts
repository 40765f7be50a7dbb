import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { TimerHeap } from "../../runtime/vmx/timer-heap.ts";

describe("TimerHeap", () => {
  it("pops by time, then by insertion order, under any interleaving", () => {
    const op = fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constant(-1)); // -1 = pop
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const heap = new TimerHeap();
        const model: { time: number; seq: number }[] = [];
        let seq = 0;
        const popped: number[] = [];
        const expected: number[] = [];
        for (const o of ops) {
          if (o >= 0) {
            const id = seq++;
            heap.push(o, id, () => popped.push(id));
            model.push({ time: o, seq: id });
          } else {
            model.sort((a, b) => a.time - b.time || a.seq - b.seq);
            const first = model.shift();
            expect(heap.peekTime()).toBe(first?.time ?? Number.POSITIVE_INFINITY);
            heap.pop()?.();
            if (first !== undefined) expected.push(first.seq);
          }
          expect(heap.size).toBe(model.length);
        }
        expect(popped).toEqual(expected);
      }),
    );
  });
});
