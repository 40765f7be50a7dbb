/**
 * A binary min-heap of timers ordered by (time, seq). The sequence number makes timers that are
 * due at the same time come out in the order they were scheduled, which keeps simulations
 * deterministic. Parallel arrays avoid one object per timer on the hot path.
 */
export class TimerHeap {
  #times: number[] = [];
  #seqs: number[] = [];
  #callbacks: (() => void)[] = [];

  get size(): number {
    return this.#times.length;
  }

  /** Time of the earliest timer; Infinity when empty. */
  peekTime(): number {
    return this.#times.length > 0 ? this.#times[0]! : Number.POSITIVE_INFINITY;
  }

  push(time: number, seq: number, callback: () => void): void {
    const times = this.#times;
    const seqs = this.#seqs;
    const callbacks = this.#callbacks;
    let i = times.length;
    times.push(time);
    seqs.push(seq);
    callbacks.push(callback);
    // Sift up.
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#less(time, seq, times[parent]!, seqs[parent]!)) break;
      times[i] = times[parent]!;
      seqs[i] = seqs[parent]!;
      callbacks[i] = callbacks[parent]!;
      i = parent;
    }
    times[i] = time;
    seqs[i] = seq;
    callbacks[i] = callback;
  }

  /** Removes and returns the earliest timer's callback; undefined when empty. */
  pop(): (() => void) | undefined {
    const times = this.#times;
    const seqs = this.#seqs;
    const callbacks = this.#callbacks;
    const n = times.length;
    if (n === 0) return undefined;
    const top = callbacks[0]!;
    const lastTime = times.pop()!;
    const lastSeq = seqs.pop()!;
    const lastCallback = callbacks.pop()!;
    const size = n - 1;
    if (size === 0) return top;
    // Sift the former last element down from the root.
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= size) break;
      const right = left + 1;
      let child = left;
      if (right < size && this.#less(times[right]!, seqs[right]!, times[left]!, seqs[left]!)) child = right;
      if (!this.#less(times[child]!, seqs[child]!, lastTime, lastSeq)) break;
      times[i] = times[child]!;
      seqs[i] = seqs[child]!;
      callbacks[i] = callbacks[child]!;
      i = child;
    }
    times[i] = lastTime;
    seqs[i] = lastSeq;
    callbacks[i] = lastCallback;
    return top;
  }

  #less(timeA: number, seqA: number, timeB: number, seqB: number): boolean {
    return timeA < timeB || (timeA === timeB && seqA < seqB);
  }
}
