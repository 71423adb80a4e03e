/**
 * The agent's HTTP endpoint for operators: `GET /metrics` (Prometheus text format 0.0.4) and
 * `GET /healthz` (200 `ok`, or 503 with the reason). Off unless `metrics_listen` is set, and
 * bound to loopback unless `metrics_allow_remote` is (the config refuses other hosts).
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "../lib/metrics.ts";
 * import { Liveness, registerProcessMetrics, startMetricsServer } from "./metrics_server.ts";
 * const registry = new MetricsRegistry();
 * registerProcessMetrics(registry);
 * const liveness = new Liveness({ pollMs: 100 });
 * await using server = startMetricsServer({
 *   hostname: "127.0.0.1",
 *   port: 9464,
 *   registry,
 *   health: () => liveness.status(),
 * });
 * ```
 *
 * @module
 */

import { errorText } from "../lib/error_text.ts";
import { type MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";

/** What `/healthz` answers. */
export interface HealthStatus {
  ok: boolean;
  /** `ok`, or why not (one line). */
  reason: string;
}

/** Options of {@linkcode startMetricsServer}. */
export interface MetricsServerOptions {
  /** Address to bind, e.g. `127.0.0.1` or `::1`. */
  hostname: string;
  /** Port; 0 picks a free one (see {@linkcode MetricsServer.port}). */
  port: number;
  registry: MetricsRegistry;
  /** Asked at each `/healthz` request. */
  health: () => HealthStatus;
  /** Receives one-line errors (a failing request handler); default drops them. */
  onError?: (message: string) => void;
}

/** A running metrics endpoint. */
export interface MetricsServer extends AsyncDisposable {
  /** The bound address, e.g. `127.0.0.1`. */
  readonly hostname: string;
  /** The bound port. */
  readonly port: number;
  /** Stops accepting, finishes requests in flight. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Serves `/metrics` and `/healthz` on `hostname:port`.
 *
 * @throws {Deno.errors.AddrInUse} and the other listen errors of `Deno.serve`
 */
export function startMetricsServer(options: MetricsServerOptions): MetricsServer {
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: () => {}, // the caller logs the address in its own format
    onError: (error) => {
      options.onError?.(`Metrics endpoint failed: ${errorText(error)}`);
      return new Response("internal error\n", { status: 500 });
    },
  }, (request) => handle(request, options));
  const addr = server.addr as Deno.NetAddr;
  let closing: Promise<void> | undefined;
  const close = () => closing ??= server.shutdown();
  return {
    hostname: addr.hostname,
    port: addr.port,
    close,
    [Symbol.asyncDispose]: close,
  };
}

function handle(request: Request, options: MetricsServerOptions): Response {
  const { pathname } = new URL(request.url);
  if (pathname !== "/metrics" && pathname !== "/healthz") {
    return text(404, "not found: use /metrics or /healthz\n");
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    return text(405, `method ${request.method} not allowed: use GET\n`, { allow: "GET, HEAD" });
  }
  if (pathname === "/metrics") {
    return new Response(options.registry.render(), {
      headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
    });
  }
  const health = options.health();
  return text(health.ok ? 200 : 503, `${health.ok ? "ok" : health.reason}\n`);
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** Options of {@linkcode Liveness}. */
export interface LivenessOptions {
  /** The poll timeout (`poll_ms`): the worker reports at least this often when idle. */
  pollMs: number;
  /** Longest silence before the agent counts as stuck; default max(5 s, 3 × max(pollMs, 1 s)). */
  staleAfterMs?: number;
  /** Monotonic clock, ms (tests); default `performance.now`. */
  now?: () => number;
}

/**
 * Whether the capture is alive: the poll loop runs and reported recently. The run loop calls
 * {@linkcode Liveness.polled} after every poll with records and on the idle heartbeat, and
 * {@linkcode Liveness.failed} when polling fails; `/healthz` asks {@linkcode Liveness.status}.
 */
export class Liveness {
  readonly #staleAfterMs: number;
  readonly #now: () => number;
  #last: number;
  #failure: string | undefined;

  /** Starts counting from now, so a fresh agent is healthy until it misses a poll. */
  constructor(options: LivenessOptions) {
    this.#staleAfterMs = options.staleAfterMs ??
      Math.max(5_000, 3 * Math.max(options.pollMs, 1_000));
    this.#now = options.now ?? (() => performance.now());
    this.#last = this.#now();
  }

  /** The poll loop finished a poll. */
  polled(): void {
    this.#last = this.#now();
  }

  /** The poll loop stopped for good; `/healthz` reports `reason` from now on. */
  failed(reason: string): void {
    this.#failure ??= reason;
  }

  /** Healthy when the poll loop has not failed and polled within the staleness bound. */
  status(): HealthStatus {
    if (this.#failure !== undefined) {
      return { ok: false, reason: `poll loop stopped: ${this.#failure}` };
    }
    const silentMs = this.#now() - this.#last;
    if (silentMs > this.#staleAfterMs) {
      return {
        ok: false,
        reason: `no poll for ${(silentMs / 1000).toFixed(1)} s (limit ${
          this.#staleAfterMs / 1000
        } s)`,
      };
    }
    return { ok: true, reason: "ok" };
  }
}

/** Reads a /proc file; injected in tests. */
export type ProcReader = (path: string) => string;

/** Process figures for the standard `process_*` metrics. */
export interface ProcessFigures {
  /** User plus system CPU time, seconds. */
  cpuSeconds: number;
  /** Resident set size, bytes. */
  residentBytes: number;
}

/** USER_HZ, the unit of /proc/<pid>/stat times: fixed at 100 on x86-64 and arm64, the targets we build. */
const USER_HZ = 100;

/**
 * Reads CPU time from /proc/self/stat (utime + stime, fields 14 and 15) and resident memory
 * from /proc/self/status (`VmRSS`).
 *
 * @throws {Error} when a file is missing or not in the expected shape
 */
export function readProcessFigures(
  read: ProcReader = (path) => Deno.readTextFileSync(path),
): ProcessFigures {
  const stat = read("/proc/self/stat");
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
  const after = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(after[11]); // field 14; `after` starts at field 3
  const stime = Number(after[12]);
  const rssKb = Number(/^VmRSS:\s+(\d+)\s+kB$/m.exec(read("/proc/self/status"))?.[1]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime) || !Number.isFinite(rssKb)) {
    throw new Error("Cannot read process figures: unexpected /proc/self/stat or status format");
  }
  return { cpuSeconds: (utime + stime) / USER_HZ, residentBytes: rssKb * 1024 };
}

/**
 * Registers `process_cpu_seconds_total` and `process_resident_memory_bytes`, refreshed from
 * /proc at each scrape. The names are the standard ones every Prometheus client exports, so
 * stock dashboards and alerts work unchanged.
 */
export function registerProcessMetrics(registry: MetricsRegistry, read?: ProcReader): void {
  const cpu = registry.counter(
    "process_cpu_seconds_total",
    "Total user and system CPU time, seconds.",
  );
  const rss = registry.gauge("process_resident_memory_bytes", "Resident memory size, bytes.");
  registry.onCollect(() => {
    const figures = readProcessFigures(read);
    cpu.setTotal(figures.cpuSeconds);
    rss.set(figures.residentBytes);
  });
}
