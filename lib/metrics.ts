/**
 * Counters, gauges and histograms with labels, rendered in the Prometheus text exposition
 * format 0.0.4. Pure: the caller updates the values (once per batch, not per record) and
 * serves {@linkcode MetricsRegistry.render}.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./metrics.ts";
 * const registry = new MetricsRegistry();
 * const flows = registry.counter("app_flows_total", "Flows seen.");
 * flows.add(250); // once per batch
 * const bySource = registry.counter("app_records_total", "Records by source.", ["source"]);
 * bySource.labels("host").add(3);
 * console.log(registry.render());
 * ```
 *
 * @module
 */

import { IDENTITY_SOURCES, type IdentitySource } from "./flow.ts";

/** `Content-Type` of {@linkcode MetricsRegistry.render}'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A value that only goes up. */
export interface CounterChild {
  /** Adds `n` (≥ 0; default 1). */
  add(n?: number | bigint): void;
  /**
   * Sets the total of a counter kept elsewhere (the kernel's drop counter). Only for counters
   * mirrored from a cumulative source; a smaller value than the current one is ignored.
   */
  setTotal(total: number | bigint): void;
  /** The current value. */
  get(): number;
}

/** A value that goes up and down. */
export interface GaugeChild {
  set(value: number | bigint): void;
  add(n: number): void;
  get(): number;
}

/** A distribution in cumulative buckets, with sum and count. */
export interface HistogramChild {
  /** Records one observation. */
  observe(value: number): void;
}

abstract class Family<Child> {
  readonly #children = new Map<string, Child>();
  #unlabelled: Child | undefined;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" | "histogram",
    readonly labelNames: readonly string[],
  ) {
    if (!METRIC_NAME.test(name)) throw new TypeError(`Invalid metric name ${JSON.stringify(name)}`);
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label.startsWith("__") || label === "le") {
        throw new TypeError(`Invalid label name ${JSON.stringify(label)} of metric ${name}`);
      }
    }
  }

  /**
   * The series for these label values, in `labelNames` order. Keep the result to update it
   * without a lookup.
   */
  labels(...values: string[]): Child {
    if (values.length !== this.labelNames.length) {
      throw new TypeError(
        `Metric ${this.name} takes ${this.labelNames.length} label values, got ${values.length}`,
      );
    }
    const key = values.join("\u0000");
    let child = this.#children.get(key);
    if (!child) {
      child = this.newChild();
      this.#children.set(key, child);
    }
    return child;
  }

  /** The series of an unlabelled metric. */
  protected get unlabelled(): Child {
    if (this.labelNames.length > 0) {
      throw new TypeError(`Metric ${this.name} has labels (${this.labelNames}); use labels()`);
    }
    return this.#unlabelled ??= this.newChild();
  }

  /** Appends the family's lines to `out`; an unlabelled metric shows 0 before its first update. */
  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    if (this.labelNames.length === 0) this.renderChild(out, "", this.unlabelled);
    for (const [key, child] of this.#children) {
      const values = key.split("\u0000");
      this.renderChild(
        out,
        this.labelNames.map((l, i) => labelPair(l, values[i])).join(","),
        child,
      );
    }
  }

  protected abstract newChild(): Child;
  protected abstract renderChild(out: string[], labels: string, child: Child): void;
}

class CounterValue implements CounterChild {
  value = 0;
  add(n: number | bigint = 1): void {
    const v = Number(n);
    if (!(v >= 0)) throw new RangeError(`Cannot add ${n} to a counter: it only goes up`);
    this.value += v;
  }
  setTotal(total: number | bigint): void {
    const v = Number(total);
    if (v > this.value) this.value = v;
  }
  get(): number {
    return this.value;
  }
}

class GaugeValue implements GaugeChild {
  value = 0;
  set(value: number | bigint): void {
    this.value = Number(value);
  }
  add(n: number): void {
    this.value += n;
  }
  get(): number {
    return this.value;
  }
}

class HistogramValue implements HistogramChild {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    // Per-bucket counts; render() makes them cumulative.
    let i = 0;
    while (i < this.bounds.length && value > this.bounds[i]) i++;
    if (i < this.bounds.length) this.counts[i]++;
    this.sum += value;
    this.count++;
  }
}

/** A counter family; unlabelled counters are updated directly. */
export class Counter extends Family<CounterChild> implements CounterChild {
  add(n?: number | bigint): void {
    this.unlabelled.add(n);
  }
  setTotal(total: number | bigint): void {
    this.unlabelled.setTotal(total);
  }
  get(): number {
    return this.unlabelled.get();
  }
  protected newChild(): CounterChild {
    return new CounterValue();
  }
  protected renderChild(out: string[], labels: string, child: CounterChild): void {
    out.push(sample(this.name, labels, child.get()));
  }
}

/** A gauge family; unlabelled gauges are updated directly. */
export class Gauge extends Family<GaugeChild> implements GaugeChild {
  set(value: number | bigint): void {
    this.unlabelled.set(value);
  }
  add(n: number): void {
    this.unlabelled.add(n);
  }
  get(): number {
    return this.unlabelled.get();
  }
  protected newChild(): GaugeChild {
    return new GaugeValue();
  }
  protected renderChild(out: string[], labels: string, child: GaugeChild): void {
    out.push(sample(this.name, labels, child.get()));
  }
}

/** A histogram family; unlabelled histograms are updated directly. */
export class Histogram extends Family<HistogramChild> implements HistogramChild {
  readonly #bounds: readonly number[];

  constructor(name: string, help: string, labelNames: readonly string[], bounds: number[]) {
    const sorted = [...bounds].sort((a, b) => a - b);
    if (sorted.length === 0 || sorted.some((b, i) => !Number.isFinite(b) || b === sorted[i - 1])) {
      throw new TypeError(`Invalid buckets of histogram ${name}: expected distinct finite bounds`);
    }
    super(name, help, "histogram", labelNames);
    this.#bounds = sorted;
  }

  observe(value: number): void {
    this.unlabelled.observe(value);
  }

  protected newChild(): HistogramChild {
    return new HistogramValue(this.#bounds);
  }

  protected renderChild(out: string[], labels: string, child: HistogramChild): void {
    const h = child as HistogramValue;
    const sep = labels ? "," : "";
    let cumulative = 0;
    for (let i = 0; i < h.bounds.length; i++) {
      cumulative += h.counts[i];
      out.push(
        sample(`${this.name}_bucket`, `${labels}${sep}le="${number(h.bounds[i])}"`, cumulative),
      );
    }
    out.push(sample(`${this.name}_bucket`, `${labels}${sep}le="+Inf"`, h.count));
    out.push(sample(`${this.name}_sum`, labels, h.sum));
    out.push(sample(`${this.name}_count`, labels, h.count));
  }
}

/** A set of metric families and the hooks that refresh them before each scrape. */
export class MetricsRegistry {
  readonly #families = new Map<string, Family<unknown>>();
  readonly #collectors: (() => void)[] = [];

  /** Registers a counter. Names end in `_total` by convention. */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, "counter", labelNames));
  }

  /** Registers a gauge. */
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, "gauge", labelNames));
  }

  /** Registers a histogram with these upper bucket bounds (`+Inf` is implied). */
  histogram(
    name: string,
    help: string,
    buckets: number[],
    labelNames: readonly string[] = [],
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /**
   * Runs `collect` at the start of every {@linkcode render}: the place to copy values that are
   * cheap to read at scrape time (kernel counters, spool figures, /proc). A throwing collector
   * leaves its metrics at their last values.
   */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  /** The exposition text: families in registration order, `# HELP` and `# TYPE` for each. */
  render(): string {
    for (const collect of this.#collectors) {
      try {
        collect();
      } catch {
        // A failed source must not take the other metrics down with it.
      }
    }
    const out: string[] = [];
    for (const family of this.#families.values()) family.render(out);
    return out.join("\n") + "\n";
  }

  #add<F extends Family<unknown>>(family: F): F {
    if (this.#families.has(family.name)) {
      throw new TypeError(`Metric ${family.name} is already registered`);
    }
    this.#families.set(family.name, family);
    return family;
  }
}

/** Bucket bounds of {@linkcode AgentMetrics.workerLag}, seconds. */
export const WORKER_LAG_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The agent's metrics, named once. Updates are per batch; see docs/operations.md. */
export interface AgentMetrics {
  flowsCaptured: Counter;
  kernelDrops: Counter;
  recursionMisses: Counter;
  /** Records made when the socket was destroyed (its close run skipped, or nobody followed it). */
  flowsRecovered: Counter;
  /** Of those, sockets nobody followed (orphans open since before the capture). */
  unfollowedAtDestroy: Counter;
  /** Records the sweep made: sockets whose close and destroy no program ran for. */
  flowsSwept: Counter;
  /** States of freed sockets, record out, whose destroy no program saw: deleted by the sweep. */
  staleStatesSwept: Counter;
  /** Interim records: snapshots of open sockets at window ends. */
  interimRecords: Counter;
  /** Duration of the latest interim pass, seconds. */
  interimPassSeconds: Gauge;
  /** 1 while the state tracepoint is attached (docs/capture.md), else 0. */
  stateTracepointAttached: Gauge;
  /** `labels(source)` for each {@linkcode IdentitySource}. */
  recordsByIdentitySource: Counter;
  batchesSent: Counter;
  batchesFailed: Counter;
  batchesRetried: Counter;
  spoolBytes: Gauge;
  spoolFiles: Gauge;
  spoolOldestBatchAgeSeconds: Gauge;
  /** `labels(map)`: `ip_workload`, `port_workload`. */
  identityMapEntries: Gauge;
  identityMapCapacity: Gauge;
  /** Per decoded batch: now minus the oldest record's `tEndNs`, seconds. */
  workerLag: Histogram;
  /** Per-source children of `recordsByIdentitySource`, for a lookup-free count. */
  bySource: Record<IdentitySource, CounterChild>;
}

/**
 * Registers the agent's metrics (prefix `flowexporter_`) on `registry`.
 *
 * @example
 * ```ts
 * import { agentMetrics, MetricsRegistry } from "./metrics.ts";
 * const m = agentMetrics(new MetricsRegistry());
 * m.flowsCaptured.add(100);
 * m.bySource.host.add(100);
 * ```
 */
export function agentMetrics(registry: MetricsRegistry): AgentMetrics {
  const p = "flowexporter_";
  const counter = (name: string, help: string, labels: string[] = []) =>
    registry.counter(p + name, help, labels);
  const gauge = (name: string, help: string, labels: string[] = []) =>
    registry.gauge(p + name, help, labels);
  const flowsCaptured = counter(
    "flows_captured_total",
    "Flow records of closed sockets decoded from the kernel.",
  );
  const kernelDrops = counter(
    "kernel_drops_total",
    "Flow records the kernel could not hand over because the buffer was full.",
  );
  const recursionMisses = counter(
    "recursion_misses_total",
    "Tracepoint runs the kernel skipped because the program would nest on a CPU.",
  );
  const flowsRecovered = counter(
    "flows_recovered_total",
    "Flow records made when the socket was destroyed (the kernel skipped its close run, or nobody followed the socket) or by the sweep.",
  );
  const recordsByIdentitySource = counter(
    "records_by_identity_source_total",
    "Flow records by where their local workload ID came from (port-map, ip-map, host, unknown).",
    ["source"],
  );
  const bySource = Object.fromEntries(
    IDENTITY_SOURCES.map((s) => [s, recordsByIdentitySource.labels(s)]),
  ) as Record<IdentitySource, CounterChild>;
  return {
    flowsCaptured,
    kernelDrops,
    recursionMisses,
    flowsRecovered,
    unfollowedAtDestroy: counter(
      "unfollowed_at_destroy_total",
      "Sockets nobody followed (orphans open since before the capture) recorded at their destroy.",
    ),
    flowsSwept: counter(
      "flows_swept_total",
      "Flow records the sweep made: sockets whose close and destroy the kernel ran no program for.",
    ),
    staleStatesSwept: counter(
      "stale_states_swept_total",
      "Per-socket states the sweep deleted: sockets freed, record out, whose destroy no program saw.",
    ),
    interimRecords: counter(
      "interim_records_total",
      "Interim records: snapshots of sockets open longer than the interim interval, at window ends.",
    ),
    interimPassSeconds: gauge(
      "interim_pass_seconds",
      "How long the latest interim pass over the open sockets took.",
    ),
    stateTracepointAttached: gauge(
      "state_tracepoint_attached",
      "1 while the state tracepoint runs at every TCP state change: sockets sock_ops does not follow are open, or this host cannot count them.",
    ),
    recordsByIdentitySource,
    bySource,
    batchesSent: counter("batches_sent_total", "Batches the collector accepted."),
    batchesFailed: counter(
      "batches_failed_total",
      "Send rounds that used up their attempts (the batch stays spooled and is tried again).",
    ),
    batchesRetried: counter("batches_retried_total", "Retried send attempts."),
    spoolBytes: gauge("spool_bytes", "Bytes in the spool directory."),
    spoolFiles: gauge("spool_files", "Unsent batches in the spool."),
    spoolOldestBatchAgeSeconds: gauge(
      "spool_oldest_batch_age_seconds",
      "Age of the oldest unsent batch, 0 when the spool is empty.",
    ),
    identityMapEntries: gauge("identity_map_entries", "Entries in a pinned identity map.", ["map"]),
    identityMapCapacity: gauge(
      "identity_map_capacity",
      "Capacity (max entries) of a pinned identity map.",
      ["map"],
    ),
    workerLag: registry.histogram(
      `${p}worker_lag_seconds`,
      "Per decoded batch: time from the oldest record's close in the kernel to its decoding.",
      WORKER_LAG_BUCKETS,
    ),
  };
}

function sample(name: string, labels: string, value: number): string {
  return `${name}${labels ? `{${labels}}` : ""} ${number(value)}`;
}

function labelPair(name: string, value: string): string {
  return `${name}="${value.replace(/[\\"\n]/g, (c) => c === "\n" ? "\\n" : `\\${c}`)}"`;
}

function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => c === "\n" ? "\\n" : "\\\\");
}

function number(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}
