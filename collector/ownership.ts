/**
 * Which workload owned an address (or an address and port) at a given time, learned from
 * heartbeats: every flow an exporter reports says "workload W held this local address from
 * `tStartNs` to `tEndNs`". Pure: no I/O, no clock; the caller supplies every time.
 *
 * Each key (an address, or address and port, as the caller spells it) keeps, per workload,
 * sorted non-overlapping ranges: a heartbeat overlapping a range, or closer to it than
 * `mergeGapNs`, extends it. Lookups widen every range by `slackNs` on both sides (clock skew
 * between hosts, and a client's SYN_SENT preceding the server's SYN_RECV). A time that falls in
 * the ranges of two workloads is contested: the lookup answers `ambiguous`, never a guess.
 *
 * {@linkcode OwnershipMap.prune} forgets ranges that ended before a horizon. A time before the
 * horizon is still answered on a key whose ranges were all kept over it: a workload whose
 * heartbeats (interim records of a long-lived connection) kept its range alive owns the key as
 * far back as that range goes. Each key remembers how far its forgotten ranges reached, and a
 * key learned after a prune starts with the horizon as that reach, so that a lookup never
 * answers from part of the evidence ({@linkcode OwnershipMap.reach}).
 *
 * @example
 * ```ts
 * import { OwnershipMap } from "./ownership.ts";
 * const map = new OwnershipMap({ mergeGapNs: 30_000_000_000n, slackNs: 1_000_000_000n });
 * map.add("10.0.0.7", "checkout", 100_000_000_000n, 160_000_000_000n);
 * map.lookup("10.0.0.7", 120_000_000_000n); // { kind: "owned", workload: "checkout" }
 * map.lookup("10.0.0.7", 500_000_000_000n); // { kind: "none" }
 * ```
 *
 * @module
 */

/** The answer of {@linkcode OwnershipMap.lookup}. */
export type Ownership =
  | { readonly kind: "owned"; readonly workload: string }
  | { readonly kind: "none" }
  | { readonly kind: "ambiguous"; readonly workloads: readonly string[] };

/** One merged range of one workload on one key; times are inclusive, ns since the epoch. */
export interface OwnershipRange {
  readonly key: string;
  readonly workload: string;
  readonly startNs: bigint;
  readonly endNs: bigint;
}

/**
 * A stretch of time two workloads both claim on one key, slack included: lookups in
 * `[startNs, endNs]` answer `ambiguous`.
 */
export interface ContestedStretch {
  readonly key: string;
  readonly startNs: bigint;
  readonly endNs: bigint;
  readonly workloads: readonly [string, string];
}

/** One piece of {@linkcode OwnershipMap.timeline}: the workloads whose ranges cover it. */
export interface TimelineSegment {
  readonly startNs: bigint;
  readonly endNs: bigint;
  /** One workload, or several when the stretch is contested. */
  readonly workloads: readonly string[];
}

/** Tuning of {@linkcode OwnershipMap}. */
export interface OwnershipOptions {
  /** Heartbeats of one workload at most this far apart merge into one range. Default 30 s. */
  mergeGapNs?: bigint;
  /** Tolerance around every range on lookup. Default 1 s. */
  slackNs?: bigint;
}

interface Span {
  start: bigint;
  end: bigint;
}

/** One key's ranges by workload, and how far (slack included) its forgotten ranges reached. */
interface KeyRanges {
  readonly workloads: Map<string, Span[]>;
  forgottenUntil: bigint;
}

const NONE: Ownership = Object.freeze({ kind: "none" });
const MIN_TIME = -(1n << 63n);

/** Ownership ranges per key, merged from heartbeats; see the module documentation. */
export class OwnershipMap {
  readonly #byKey = new Map<string, KeyRanges>();
  readonly #gap: bigint;
  readonly #slack: bigint;
  #horizon = MIN_TIME;
  #spans = 0;

  /** Creates an empty map. */
  constructor(options: OwnershipOptions = {}) {
    this.#gap = options.mergeGapNs ?? 30_000_000_000n;
    this.#slack = options.slackNs ?? 1_000_000_000n;
    if (this.#gap < 0n || this.#slack < 0n) {
      throw new RangeError("Cannot create ownership map: mergeGapNs and slackNs must be >= 0");
    }
  }

  /** The tolerance around every range on lookup, ns. */
  get slackNs(): bigint {
    return this.#slack;
  }

  /** Number of ranges held, all keys and workloads. */
  get size(): number {
    return this.#spans;
  }

  /**
   * Ranges that ended (slack included) before this were pruned: a lookup before it answers only
   * on a key whose ranges reach back over it (see the module documentation).
   */
  get horizonNs(): bigint {
    return this.#horizon;
  }

  /**
   * Records that `workload` held `key` from `startNs` to `endNs` (inclusive; swapped if
   * reversed). Heartbeats that end before the pruning horizon are ignored.
   *
   * @param contested when given, receives the stretches in which the updated range now
   *   competes with another workload's range on the same key.
   * @returns whether the workload's ranges on `key` changed.
   */
  add(
    key: string,
    workload: string,
    startNs: bigint,
    endNs: bigint,
    contested?: ContestedStretch[],
  ): boolean {
    if (endNs < startNs) [startNs, endNs] = [endNs, startNs];
    if (endNs + this.#slack < this.#horizon) return false;
    let entry = this.#byKey.get(key);
    if (entry === undefined) {
      // What this key held before the horizon may have been forgotten already.
      entry = { workloads: new Map(), forgottenUntil: this.#horizon - 1n };
      this.#byKey.set(key, entry);
    }
    const workloads = entry.workloads;
    let spans = workloads.get(workload);
    if (spans === undefined) {
      spans = [];
      workloads.set(workload, spans);
    }
    const merged = this.#merge(spans, startNs, endNs);
    if (merged === undefined) return false;
    if (contested !== undefined && workloads.size > 1) {
      this.#collectContests(key, workload, merged, workloads, contested);
    }
    return true;
  }

  /**
   * Who held `key` at `tNs`: one workload, none, or several (`ambiguous`). `none` also when a
   * range of the key that could have covered `tNs` was forgotten.
   */
  lookup(key: string, tNs: bigint): Ownership {
    const entry = this.#byKey.get(key);
    if (entry === undefined || tNs <= entry.forgottenUntil) return NONE;
    let found: string | undefined;
    let more: string[] | undefined;
    for (const [workload, spans] of entry.workloads) {
      if (!this.#covers(spans, tNs)) continue;
      if (found === undefined) found = workload;
      else (more ??= [found]).push(workload);
    }
    if (more !== undefined) return { kind: "ambiguous", workloads: more.sort() };
    return found === undefined ? NONE : { kind: "owned", workload: found };
  }

  /**
   * How far (slack included) the forgotten ranges of `key` reached: lookups at or before it
   * answer `none`. Undefined for a key the map does not hold. Persist it with the key's ranges.
   */
  reach(key: string): bigint | undefined {
    return this.#byKey.get(key)?.forgottenUntil;
  }

  /**
   * Restores a persisted {@linkcode reach} of a key whose ranges were replayed (after a restart):
   * the key answers again as far back as it did. Does nothing for a key the map does not hold.
   */
  restoreReach(key: string, forgottenUntil: bigint): void {
    const entry = this.#byKey.get(key);
    if (entry !== undefined) entry.forgottenUntil = forgottenUntil;
  }

  /** The ranges of one key (all workloads, or one), sorted by start then workload. */
  ranges(key: string, workload?: string): OwnershipRange[] {
    const out: OwnershipRange[] = [];
    for (const [w, spans] of this.#byKey.get(key)?.workloads ?? []) {
      if (workload !== undefined && w !== workload) continue;
      for (const s of spans) out.push({ key, workload: w, startNs: s.start, endNs: s.end });
    }
    return out.sort((a, b) =>
      a.startNs < b.startNs ? -1 : a.startNs > b.startNs ? 1 : a.workload < b.workload ? -1 : 1
    );
  }

  /**
   * The ranges of `key` (without slack) as sorted, non-overlapping segments, each with the
   * workloads covering it; a segment with several workloads is contested.
   */
  timeline(key: string): TimelineSegment[] {
    const edges: { t: bigint; workload: string; delta: 1 | -1 }[] = [];
    for (const [workload, spans] of this.#byKey.get(key)?.workloads ?? []) {
      for (const s of spans) {
        edges.push({ t: s.start, workload, delta: 1 }, { t: s.end + 1n, workload, delta: -1 });
      }
    }
    edges.sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
    const active = new Map<string, number>();
    const out: TimelineSegment[] = [];
    for (let i = 0; i < edges.length;) {
      const t = edges[i].t;
      for (; i < edges.length && edges[i].t === t; i++) {
        const { workload, delta } = edges[i];
        const n = (active.get(workload) ?? 0) + delta;
        if (n === 0) active.delete(workload);
        else active.set(workload, n);
      }
      if (active.size === 0 || i === edges.length) continue;
      const workloads = [...active.keys()].sort();
      const last = out.at(-1);
      if (last !== undefined && last.endNs === t - 1n && same(last.workloads, workloads)) {
        out[out.length - 1] = { ...last, endNs: edges[i].t - 1n };
      } else {
        out.push({ startNs: t, endNs: edges[i].t - 1n, workloads });
      }
    }
    return out;
  }

  /**
   * Forgets ranges that no lookup at or after `horizonNs` can reach. Lookups before it answer
   * `none` where a forgotten range could have covered (or contested) them.
   *
   * @returns the number of ranges removed.
   */
  prune(horizonNs: bigint): number {
    if (horizonNs <= this.#horizon) return 0;
    this.#horizon = horizonNs;
    const slack = this.#slack;
    let removed = 0;
    for (const [key, entry] of this.#byKey) {
      const workloads = entry.workloads;
      for (const [workload, spans] of workloads) {
        let n = 0;
        while (n < spans.length && spans[n].end + slack < horizonNs) n++;
        if (n === 0) continue;
        const reach = spans[n - 1].end + slack;
        if (reach > entry.forgottenUntil) entry.forgottenUntil = reach;
        spans.splice(0, n);
        removed += n;
        if (spans.length === 0) workloads.delete(workload);
      }
      if (workloads.size === 0) this.#byKey.delete(key);
    }
    this.#spans -= removed;
    return removed;
  }

  /** Inserts or merges [start, end]; returns the resulting span, or undefined if unchanged. */
  #merge(spans: Span[], start: bigint, end: bigint): Span | undefined {
    const gap = this.#gap;
    // Fast path: heartbeats mostly arrive in time order and touch the latest range.
    const last = spans.at(-1);
    if (last !== undefined && start >= last.start && start <= last.end + gap) {
      if (end <= last.end) return undefined;
      last.end = end;
      return last;
    }
    // First span that ends within `gap` of `start` (ends are increasing).
    let lo = 0;
    let hi = spans.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (spans[mid].end + gap < start) lo = mid + 1;
      else hi = mid;
    }
    let j = lo;
    while (j < spans.length && spans[j].start <= end + gap) j++;
    if (j === lo) {
      const span = { start, end };
      spans.splice(lo, 0, span);
      this.#spans++;
      return span;
    }
    const first = spans[lo];
    if (j - lo === 1 && first.start <= start && end <= first.end) return undefined;
    first.start = first.start < start ? first.start : start;
    const lastEnd = spans[j - 1].end;
    first.end = lastEnd > end ? lastEnd : end;
    spans.splice(lo + 1, j - lo - 1);
    this.#spans -= j - lo - 1;
    return first;
  }

  #covers(spans: Span[], t: bigint): boolean {
    const slack = this.#slack;
    let lo = 0;
    let hi = spans.length;
    // Last span whose widened start is <= t.
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (spans[mid].start - slack <= t) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 && t <= spans[lo - 1].end + slack;
  }

  #collectContests(
    key: string,
    workload: string,
    span: Span,
    workloads: Map<string, Span[]>,
    out: ContestedStretch[],
  ): void {
    const reach = 2n * this.#slack;
    for (const [other, spans] of workloads) {
      if (other === workload) continue;
      for (const o of spans) {
        if (o.end + reach < span.start) continue;
        if (o.start > span.end + reach) break;
        const startNs = (o.start > span.start ? o.start : span.start) - this.#slack;
        const endNs = (o.end < span.end ? o.end : span.end) + this.#slack;
        out.push({ key, startNs, endNs, workloads: [workload, other] });
      }
    }
  }
}

function same(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
