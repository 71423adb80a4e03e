/**
 * Attributes the remote end of each flow to a workload, from the heartbeats of all hosts, and
 * holds flows whose remote owner is not known yet. Pure: no I/O, no clock; the caller supplies
 * the times, persists the verdicts and replays the held flows after a restart.
 *
 * Heartbeats (flows whose local workload is known) feed two kinds of keys:
 * - the address key (`10.0.0.7`), from flows identified by the IP map or as the host;
 * - the address-and-port key (`[10.0.0.7]:8080`), from flows identified by the port map and
 *   from accepted connections (their local port is a listening port, whatever identified it).
 *
 * A remote end that is a server (the local side connected, or the direction is unknown) is
 * looked up by address and port first, then by address; a remote end that is a client
 * (ephemeral port) by address only. An address that carries port-map workloads is shared: the
 * address alone then never attributes a server end, since its port may belong to a port-map
 * workload whose heartbeat has not arrived. A contested lookup is `ambiguous` (a contested
 * address also for its ports: two hosts claim it); no match is
 * `pending`: the flow is held until a heartbeat settles it or the hold delay runs out.
 *
 * @example
 * ```ts
 * import { Attributor } from "./attributor.ts";
 * declare const flowsFromNodeB: import("../lib/flow.ts").FlowRecord[];
 * declare const flowFromNodeA: import("../lib/flow.ts").FlowRecord;
 * const attributor = new Attributor({ holdNs: 120_000_000_000n });
 * attributor.observe("node-b", flowsFromNodeB);
 * const remote = attributor.endpoint("node-a", flowFromNodeA);
 * attributor.attribute(remote); // { status: "attributed", workload: "db", ownerKey: "[10.0.0.9]:5432" }
 * ```
 *
 * @module
 */

import type { Direction, FlowRecord } from "../lib/flow.ts";
import { ipKey, portKey } from "./_keys.ts";
import {
  type ContestedStretch,
  OwnershipMap,
  type OwnershipOptions,
  type OwnershipRange,
} from "./ownership.ts";

/** Attribution state of a flow's remote end, as stored. */
export type AttributionStatus = "attributed" | "pending" | "unattributed" | "ambiguous";

/** The result of attributing one remote end. */
export interface Verdict {
  readonly status: AttributionStatus;
  /** The remote workload, when `status` is `attributed`. */
  readonly workload?: string;
  /** The ownership key that gave the answer, when `status` is `attributed`. */
  readonly ownerKey?: string;
}

/** What attribution needs to know about a flow's remote end. */
export interface RemoteEndpoint {
  /** Address key of the remote end (see {@linkcode Attributor.endpoint}). */
  readonly ipKey: string;
  /** Address-and-port key of the remote end. */
  readonly portKey: string;
  /** The remote end accepted nothing: its port is ephemeral (the local side accepted). */
  readonly remoteIsClient: boolean;
  /** The flow's start: the owner is the one whose range contains this time. */
  readonly tStartNs: bigint;
}

/** A held flow that got its final verdict (attributed, or given up on). */
export interface Resolution {
  readonly id: number;
  readonly verdict: Verdict;
}

/**
 * Earlier attributions the caller must withdraw: attributed flows whose start lies in
 * `[fromNs, toNs]` get `status` and lose their remote workload. Which flows: with `byAddress`,
 * those whose remote address key is `key` (whatever key attributed them); otherwise those
 * attributed through `key`; only those whose remote end is a server when `serverEndsOnly`.
 */
export interface Revocation {
  readonly key: string;
  readonly byAddress: boolean;
  readonly fromNs: bigint;
  readonly toNs: bigint;
  readonly serverEndsOnly: boolean;
  readonly status: "ambiguous" | "unattributed";
}

/** What one call of {@linkcode Attributor.observe} changed. */
export interface Observation {
  /** Ownership keys whose ranges changed, with the workloads that changed on each. */
  readonly changed: ReadonlyMap<string, ReadonlySet<string>>;
  /** Address keys whose port-map heartbeats reached a later end (persist with `shared()`). */
  readonly sharedChanged: ReadonlySet<string>;
  /** Attributions that the new heartbeats call into question. */
  readonly revocations: readonly Revocation[];
}

/**
 * What one host's flows say about ownership, merged: the input of {@linkcode Attributor.learn}.
 * A cluster node publishes it for every batch, and every node learns it (collector/cluster/).
 */
export interface Heartbeats {
  /** Merged ranges per key and workload (gaps up to `mergeGapNs` closed). */
  readonly ranges: readonly OwnershipRange[];
  /** Address keys with port-map heartbeats, with the latest end of those heartbeats. */
  readonly shared: ReadonlyMap<string, bigint>;
}

/** Tuning of {@linkcode Attributor}. */
export interface AttributorOptions extends OwnershipOptions {
  /** How long a flow is held waiting for its remote owner's heartbeat. Default 120 s. */
  holdNs?: bigint;
  /** Most flows held at once; the oldest are given up on beyond it. Default 100 000. */
  maxHeld?: number;
}

interface Held {
  readonly id: number;
  readonly remote: RemoteEndpoint;
  readonly receivedNs: bigint;
  readonly keys: readonly string[];
  done: boolean;
}

interface Touch {
  min: bigint;
  max: bigint;
}

const PENDING: Verdict = Object.freeze({ status: "pending" });
const AMBIGUOUS: Verdict = Object.freeze({ status: "ambiguous" });
const UNATTRIBUTED: Verdict = Object.freeze({ status: "unattributed" });
const MIN_TIME = -(1n << 63n);

/** Heartbeat-based attribution with a bounded hold queue; see the module documentation. */
export class Attributor {
  /** The ranges learned so far (read them to persist; feed them back with `restoreRange`). */
  readonly ownership: OwnershipMap;
  readonly #holdNs: bigint;
  readonly #maxHeld: number;
  readonly #mergeGapNs: bigint;
  readonly #window: bigint;
  /** Address keys with port-map heartbeats → latest end of those heartbeats. */
  readonly #shared = new Map<string, bigint>();
  readonly #heldByKey = new Map<string, Set<Held>>();
  #queue: Held[] = [];
  #queueHead = 0;
  #held = 0;
  /** Latest start of any flow attributed so far: no revocation needs to reach past it. */
  #latestAttributedNs = MIN_TIME;
  /** Changed keys since the last `retry`, with the span of heartbeat times that changed them. */
  #touched = new Map<string, Touch>();

  /** Creates an attributor with empty ownership and no held flows. */
  constructor(options: AttributorOptions = {}) {
    this.ownership = new OwnershipMap(options);
    this.#holdNs = options.holdNs ?? 120_000_000_000n;
    this.#maxHeld = options.maxHeld ?? 100_000;
    this.#mergeGapNs = options.mergeGapNs ?? 30_000_000_000n;
    // A heartbeat at [s, e] changes lookups at most gap + slack outside it.
    this.#window = (options.mergeGapNs ?? 30_000_000_000n) + (options.slackNs ?? 1_000_000_000n);
  }

  /** Number of flows currently held. */
  get heldCount(): number {
    return this.#held;
  }

  /** The remote end of `flow`, reported by `host`, as attribution sees it. */
  endpoint(host: string, flow: FlowRecord): RemoteEndpoint {
    return remoteEndpoint(
      ipKey(host, flow.remoteIp),
      flow.remotePort,
      flow.direction,
      flow.tStartNs,
    );
  }

  /**
   * Learns the heartbeats in `flows`, reported by `host`. Call it for a batch before
   * attributing the batch's own flows, then call {@linkcode retry}. Same as
   * `learn(heartbeats(host, flows))`.
   */
  observe(host: string, flows: readonly FlowRecord[]): Observation {
    return this.learn(this.heartbeats(host, flows));
  }

  /**
   * The heartbeats in `flows`, reported by `host`, merged per key and workload; learns nothing.
   */
  heartbeats(host: string, flows: readonly FlowRecord[]): Heartbeats {
    const merged = new OwnershipMap({ mergeGapNs: this.#mergeGapNs, slackNs: 0n });
    const keys = new Set<string>();
    const shared = new Map<string, bigint>();
    let lastIp: Uint8Array | undefined;
    let lastKey = "";
    for (const flow of flows) {
      const workload = flow.localWorkloadId;
      if (flow.identitySource === "unknown" || workload === "") continue;
      if (flow.localIp !== lastIp) {
        lastIp = flow.localIp;
        lastKey = ipKey(host, flow.localIp);
      }
      const { tStartNs, tEndNs } = flow;
      if (flow.identitySource === "port-map") {
        const latest = shared.get(lastKey);
        if (latest === undefined || latest < tEndNs) shared.set(lastKey, tEndNs);
      } else {
        merged.add(lastKey, workload, tStartNs, tEndNs);
        keys.add(lastKey);
      }
      if (flow.identitySource === "port-map" || flow.direction === "inbound") {
        const key = portKey(lastKey, flow.localPort);
        merged.add(key, workload, tStartNs, tEndNs);
        keys.add(key);
      }
    }
    return { ranges: [...keys].flatMap((key) => merged.ranges(key)), shared };
  }

  /** Learns merged heartbeats (of {@linkcode heartbeats}); then call {@linkcode retry}. */
  learn(heartbeats: Heartbeats): Observation {
    const changed = new Map<string, Set<string>>();
    const contested: ContestedStretch[] = [];
    const revocations: Revocation[] = [];
    const sharedChanged = new Set<string>();
    for (const [key, endNs] of heartbeats.shared) {
      const latest = this.#shared.get(key);
      if (latest === undefined && this.#latestAttributedNs >= this.ownership.horizonNs) {
        // Attributions of server ends by address alone may have missed this workload.
        revocations.push({
          key,
          byAddress: false,
          fromNs: this.ownership.horizonNs,
          toNs: this.#latestAttributedNs,
          serverEndsOnly: true,
          status: "unattributed",
        });
      }
      if (latest === undefined || latest < endNs) {
        this.#shared.set(key, endNs);
        sharedChanged.add(key);
      }
    }
    for (const r of heartbeats.ranges) {
      this.#learn(r.key, r.workload, r.startNs, r.endNs, changed, contested);
    }
    for (const c of mergeContests(contested)) {
      // Two owners of one address taint every attribution to it, by port ones included.
      revocations.push({
        key: c.key,
        byAddress: !c.key.startsWith("["),
        fromNs: c.startNs,
        toNs: c.endNs,
        serverEndsOnly: false,
        status: "ambiguous",
      });
    }
    return { changed, sharedChanged, revocations };
  }

  /**
   * Attributes one remote end with what is known now; `pending` means "hold it". A flow that
   * started before the ownership horizon is attributed only through a range that heartbeats
   * kept alive over it (interim records of long-lived connections), and a server end there only
   * by its port: whether its address was shared then may have been forgotten. Held, it could
   * never settle: it is `unattributed` at once.
   */
  attribute(remote: RemoteEndpoint): Verdict {
    const t = remote.tStartNs;
    const forgotten = t < this.ownership.horizonNs;
    const byIp = this.ownership.lookup(remote.ipKey, t);
    if (byIp.kind === "ambiguous") return AMBIGUOUS;
    if (!remote.remoteIsClient) {
      const byPort = this.ownership.lookup(remote.portKey, t);
      if (byPort.kind === "owned") return this.#attributed(remote, byPort.workload, remote.portKey);
      if (byPort.kind === "ambiguous") return AMBIGUOUS;
      if (forgotten) return UNATTRIBUTED;
    }
    if (byIp.kind === "none") return forgotten ? UNATTRIBUTED : PENDING;
    if (!remote.remoteIsClient && this.#shared.has(remote.ipKey)) return PENDING;
    return this.#attributed(remote, byIp.workload, remote.ipKey);
  }

  /**
   * Holds flow `id` (stored as pending) until a heartbeat settles it, `holdNs` after
   * `receivedNs`, or it is the oldest beyond `maxHeld` (see {@linkcode expire}).
   */
  hold(id: number, remote: RemoteEndpoint, receivedNs: bigint): void {
    // Held only because the address is shared: only a heartbeat on the port can settle it.
    const keys = remote.remoteIsClient
      ? [remote.ipKey]
      : this.ownership.lookup(remote.ipKey, remote.tStartNs).kind === "owned"
      ? [remote.portKey]
      : [remote.portKey, remote.ipKey];
    const held: Held = { id, remote, receivedNs, keys, done: false };
    for (const key of keys) {
      let set = this.#heldByKey.get(key);
      if (set === undefined) this.#heldByKey.set(key, set = new Set());
      set.add(held);
    }
    this.#queue.push(held);
    this.#held++;
  }

  /** Re-attributes the held flows that the heartbeats observed since the last call may settle. */
  retry(): Resolution[] {
    const out: Resolution[] = [];
    const touched = this.#touched;
    this.#touched = new Map();
    for (const [key, { min, max }] of touched) {
      const set = this.#heldByKey.get(key);
      if (set === undefined) continue;
      const from = min - this.#window;
      const to = max + this.#window;
      for (const held of set) {
        const t = held.remote.tStartNs;
        if (t < from || t > to) continue;
        const verdict = this.attribute(held.remote);
        if (verdict.status === "pending") continue;
        this.#release(held);
        out.push({ id: held.id, verdict });
      }
    }
    return out;
  }

  /**
   * Gives up on held flows received `holdNs` or more before `nowNs`, and on the oldest beyond
   * `maxHeld`: they resolve as `unattributed`.
   */
  expire(nowNs: bigint): Resolution[] {
    const out: Resolution[] = [];
    const queue = this.#queue;
    while (this.#queueHead < queue.length) {
      const held = queue[this.#queueHead];
      if (!held.done) {
        if (held.receivedNs + this.#holdNs > nowNs && this.#held <= this.#maxHeld) break;
        this.#release(held);
        out.push({ id: held.id, verdict: UNATTRIBUTED });
      }
      this.#queueHead++;
    }
    if (this.#queueHead > 1024 && this.#queueHead * 2 > queue.length) {
      this.#queue = queue.slice(this.#queueHead);
      this.#queueHead = 0;
    }
    return out;
  }

  /**
   * Forgets ownership that ended before `horizonNs`; flows starting earlier resolve as
   * `unattributed` from then on, but where heartbeats kept a range alive over them.
   */
  prune(horizonNs: bigint): void {
    this.ownership.prune(horizonNs);
    for (const [key, end] of this.#shared) if (end < horizonNs) this.#shared.delete(key);
  }

  /** Drops every held flow (the caller replays them from its store). */
  clearHeld(): void {
    this.#heldByKey.clear();
    this.#queue = [];
    this.#queueHead = 0;
    this.#held = 0;
  }

  /** Replays a persisted range (after a restart), before any new heartbeat. */
  restoreRange(range: OwnershipRange): void {
    this.ownership.add(range.key, range.workload, range.startNs, range.endNs);
  }

  /** Replays a persisted port-map heartbeat end (after a restart), marking the address shared. */
  restoreShared(ipKeyText: string, endNs: bigint): void {
    const latest = this.#shared.get(ipKeyText);
    if (latest === undefined || latest < endNs) this.#shared.set(ipKeyText, endNs);
  }

  /** Address keys marked shared, with the latest end of their port-map heartbeats. */
  shared(): ReadonlyMap<string, bigint> {
    return this.#shared;
  }

  #learn(
    key: string,
    workload: string,
    startNs: bigint,
    endNs: bigint,
    changed: Map<string, Set<string>>,
    contested: ContestedStretch[],
  ): void {
    if (!this.ownership.add(key, workload, startNs, endNs, contested)) return;
    let workloads = changed.get(key);
    if (workloads === undefined) changed.set(key, workloads = new Set());
    workloads.add(workload);
    const touch = this.#touched.get(key);
    if (touch === undefined) this.#touched.set(key, { min: startNs, max: endNs });
    else {
      if (startNs < touch.min) touch.min = startNs;
      if (endNs > touch.max) touch.max = endNs;
    }
  }

  #attributed(remote: RemoteEndpoint, workload: string, ownerKey: string): Verdict {
    if (remote.tStartNs > this.#latestAttributedNs) this.#latestAttributedNs = remote.tStartNs;
    return { status: "attributed", workload, ownerKey };
  }

  #release(held: Held): void {
    held.done = true;
    this.#held--;
    for (const key of held.keys) {
      const set = this.#heldByKey.get(key);
      if (set === undefined) continue;
      set.delete(held);
      if (set.size === 0) this.#heldByKey.delete(key);
    }
  }
}

/**
 * The remote end from its stored parts: address key, port, the flow's direction and start.
 * `Attributor.endpoint` builds it from a flow.
 */
export function remoteEndpoint(
  remoteIpKey: string,
  remotePort: number,
  direction: Direction,
  tStartNs: bigint,
): RemoteEndpoint {
  return {
    ipKey: remoteIpKey,
    portKey: portKey(remoteIpKey, remotePort),
    remoteIsClient: direction === "inbound",
    tStartNs,
  };
}

/** Merges overlapping stretches of the same key. */
function mergeContests(contests: ContestedStretch[]): ContestedStretch[] {
  if (contests.length < 2) return contests;
  contests.sort((a, b) =>
    a.key < b.key
      ? -1
      : a.key > b.key
      ? 1
      : a.startNs < b.startNs
      ? -1
      : a.startNs > b.startNs
      ? 1
      : 0
  );
  const out: ContestedStretch[] = [];
  for (const c of contests) {
    const last = out.at(-1);
    if (last !== undefined && last.key === c.key && c.startNs <= last.endNs) {
      if (c.endNs > last.endNs) out[out.length - 1] = { ...last, endNs: c.endNs };
    } else {
      out.push(c);
    }
  }
  return out;
}
