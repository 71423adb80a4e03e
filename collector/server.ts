/**
 * The reference collector's HTTP server:
 * - `POST /v1/batches`: one zstd- or gzip-compressed (or identity) CBOR batch per request, validated
 *   against `schema/flow_batch.cddl`, attributed and stored; a repeat of a stored batch
 *   (same host, sequence and content) answers 200 without storing it again;
 * - `GET /v1/flows`: stored flows as a JSON array, with the filters of `flowexporter query`
 *   (`from`, `to`, `workload`, `ip`, `host`, `status`, `limit`);
 * - `GET /v1/graph`, `GET /v1/graph/flows`: the workload dependency map and an edge's latest
 *   flows (collector/graph.ts), under the same rules as `GET /v1/flows`;
 * - `GET /`: the page that draws the map (collector/web.ts), served without a token;
 * - `GET /healthz`: `ok`;
 * - `GET /metrics`: a cluster node's figures (collector/cluster/node.ts), Prometheus text.
 *
 * Refusals carry one line of text: 400 malformed zstd/gzip, CBOR or schema, or a time beyond the
 * clock skew allowed; 401 missing or wrong bearer token (when a token is configured); 403 flows asked for without a token on an address
 * beyond loopback; 408 a head or body too slow; 409 a used (host, sequence) with other content;
 * 413 body, decompressed body or flow count over its limit; 415 wrong `Content-Type` or
 * `Content-Encoding`; 503 (with `Retry-After`) too many batches at once. The server keeps
 * serving after any of them.
 *
 * Bounds, so that no client can take the collector down or stall it: the request head must
 * arrive within `headerTimeoutSeconds` and the body within `bodyTimeoutSeconds` (Node's HTTP
 * server, `node:http`, enforces the first: `Deno.serve` has no header deadline); compressed
 * bodies in memory are capped in all by `maxPendingBodyBytes`, each by `maxBodyBytes`;
 * at most `maxConcurrentIngests` batches are decompressed and decoded at once, each to at most
 * `maxDecompressedBytes` and `maxBatchRecords` flows, and the decoder's memory and time are
 * bounded by those bytes (`lib/wire.ts`). Peer-supplied text reaches the log escaped
 * (`lib/printable.ts`).
 *
 * @example
 * ```ts
 * import { startCollector } from "./server.ts";
 * await using collector = await startCollector({ dbPath: "flows.db", port: 0 });
 * console.log(collector.url); // http://127.0.0.1:40123
 * ```
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Socket } from "node:net";
import {
  batchDecoder,
  CBOR_MEDIA_TYPE,
  type DecodedBatch,
  IDEMPOTENCY_KEY_HEADER,
  idempotencyKey,
  WireFormatError,
  WireLimitError,
} from "../lib/wire.ts";
import type { Logger } from "../lib/logger.ts";
import { Log } from "../lib/log.ts";
import { printable } from "../lib/printable.ts";
import { PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";
import { errorText } from "../lib/error_text.ts";
import { BodyBudget, decodeContent, HttpError, readBoundedBody } from "./_http_body.ts";
import {
  BatchConflictError,
  batchDigest,
  checkNotInFuture,
  ImplausibleBatchError,
  Ingestor,
  type IngestResult,
} from "./ingest.ts";
import { DEFAULT_LIMITS, DEFAULT_PORT } from "./defaults.ts";
import { FilterError, formatStoredFlowJson, parseFlowFilter } from "./query.ts";
import { type FlowFilter, FlowStore, type StoredFlow } from "./store.ts";
import { cachedGraphSource, graphResponse, type GraphSource } from "./graph.ts";
import { SqliteGraphSource } from "./graph_sqlite.ts";
import { webAsset } from "./web.ts";

/** Seconds a client refused with 503 is asked to wait (`Retry-After`). */
export const RETRY_AFTER_SECONDS = 5;

/** Options of {@linkcode startCollector}; only `dbPath` is required. */
export interface CollectorOptions {
  /** SQLite database file, created if missing. */
  dbPath: string;
  /** Address to listen on. Default `127.0.0.1`. */
  hostname?: string;
  /** Port to listen on; 0 picks a free one. Default {@linkcode DEFAULT_PORT}. */
  port?: number;
  /** Bearer token clients must send; overrides `tokenFile`. */
  token?: string;
  /** File holding the bearer token (surrounding whitespace ignored). */
  tokenFile?: string;
  /**
   * Serve `GET /v1/flows` without a token on an address beyond loopback. Default false: such
   * requests get 403, and the start logs a warning that batches are accepted from anyone.
   */
  allowUnauthenticated?: boolean;
  /** Largest request body accepted, compressed. Default 16 MiB. */
  maxBodyBytes?: number;
  /** Largest body accepted after decompression. Default 64 MiB (the wire format's limit). */
  maxDecompressedBytes?: number;
  /** Most flows in one batch: more gets 413 before any is decoded. Default 200 000. */
  maxBatchRecords?: number;
  /**
   * Compressed request bodies held in memory at once, all requests together; a request that
   * would go over gets 503 with `Retry-After`. Default 128 MiB.
   */
  maxPendingBodyBytes?: number;
  /**
   * Batches decompressed, decoded and stored at once; another gets 503 with `Retry-After`.
   * Default 4.
   */
  maxConcurrentIngests?: number;
  /**
   * Seconds a client has to send a request's head, from its first byte or from the previous
   * answer on the connection; then 408 and the connection is closed. Default 10.
   */
  headerTimeoutSeconds?: number;
  /** Seconds a client has to send a request's body after its head; then 408. Default 60. */
  bodyTimeoutSeconds?: number;
  /**
   * Seconds a batch's window or flows may end after the collector's clock; later gets 400
   * naming the field. Default 86 400 (one day).
   */
  maxClockSkewSeconds?: number;
  /** How long a flow waits for its remote owner's heartbeat. Default 120. */
  holdSeconds?: number;
  /** Most flows held at once. Default 100 000. */
  maxHeld?: number;
  /** Heartbeats of one workload at most this far apart merge. Default 30. */
  mergeGapSeconds?: number;
  /** Clock-skew tolerance around ownership ranges. Default 1. */
  slackSeconds?: number;
  /** How long ownership ranges are kept. Default 3600. */
  retentionSeconds?: number;
  /** PEM certificate file: serve HTTPS (with `tlsKeyFile`). */
  tlsCertFile?: string;
  /** PEM private key file of `tlsCertFile`. */
  tlsKeyFile?: string;
  /**
   * Where log lines go (`lib/logger.ts`); default text lines on standard error. Refused
   * requests are `warn`, failures `error`, one line per accepted batch `debug`. Every message
   * is on one line: text a client sent is escaped.
   */
  logger?: Logger;
  /** Wall clock in ns since the epoch; injectable for tests. */
  now?: () => bigint;
  /** Interval of the hold-expiry and pruning tick, ms. Default 1000. */
  tickMs?: number;
}

/**
 * Where the HTTP server hands validated batches and reads flows from: the SQLite store
 * ({@linkcode startCollector}), or a cluster node (collector/cluster/node.ts).
 */
export interface CollectorBackend {
  /**
   * Takes a validated batch; resolves once it is stored or durably handed on. Throws
   * `HttpError` (collector/_http_body.ts) to refuse it, e.g. 503 while it cannot be stored.
   *
   * @param batch the decoded batch
   * @param cbor its uncompressed body
   * @param body the request body as received, with its `Content-Encoding` (null: none)
   */
  ingest(
    batch: DecodedBatch,
    cbor: Uint8Array,
    body: { bytes: Uint8Array; encoding: string | null },
  ): IngestResult | Promise<IngestResult>;
  /** Stored flows matching `filter` (`GET /v1/flows`). */
  flows(filter: FlowFilter): StoredFlow[] | Promise<StoredFlow[]>;
  /** The flows the dependency map aggregates (`GET /v1/graph`), where the backend has them. */
  graph?: GraphSource;
  /** Periodic work, every `tickMs`. */
  tick(): void;
  /** Its figures in the Prometheus text format, served at `GET /metrics` when present. */
  metrics?(): Promise<string>;
  /** Called once the server has stopped. */
  close(): void | Promise<void>;
}

/** The options of {@linkcode serveCollector}: the HTTP side of {@linkcode CollectorOptions}. */
export type ServeOptions = Omit<
  CollectorOptions,
  "dbPath" | "holdSeconds" | "maxHeld" | "mergeGapSeconds" | "slackSeconds" | "retentionSeconds"
>;

/** A running HTTP server of {@linkcode serveCollector}. */
export interface CollectorServer {
  /** Base URL, e.g. `http://127.0.0.1:9470`. */
  readonly url: string;
  /** Load figures: for metrics, and for tests that wait on a condition. */
  stats(): CollectorStats;
  /**
   * Stops accepting requests, waits for those in flight (2 s at most: a client still sending
   * then is cut off), then closes the backend.
   */
  close(): Promise<void>;
}

/** A running collector. */
export interface RunningCollector {
  /** Base URL, e.g. `http://127.0.0.1:9470`. */
  readonly url: string;
  /** The ingest path (ownership map, held flows), for inspection. */
  readonly ingestor: Ingestor;
  /** The database. */
  readonly store: FlowStore;
  /** Load figures: for metrics, and for tests that wait on a condition. */
  stats(): CollectorStats;
  /**
   * Stops accepting requests, waits for those in flight (2 s at most: a client still sending
   * then is cut off), closes the database.
   */
  close(): Promise<void>;
  /** Same as `close`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** What {@linkcode RunningCollector.stats} returns. */
export interface CollectorStats {
  /** Open client connections. */
  connections: number;
  /** Batches being decompressed, decoded and stored. */
  ingesting: number;
  /** Compressed request bodies in memory, bytes. */
  pendingBodyBytes: number;
}

const MAX_QUERY_ROWS = 100_000;
/** How long an aggregation of the dependency map is reused for the same time range. */
export const GRAPH_CACHE_MS = 10_000;
/** How long `close()` waits for the requests in flight before it cuts their connections. */
const CLOSE_GRACE_MS = 2000;
/** Bytes of a refused body read and thrown away so that the client sees the answer. */
const MAX_DRAIN_BYTES = 64 * 1024 * 1024;

/**
 * Opens the database, replays its state and starts serving.
 *
 * @throws {StoreError} when the database cannot be opened; an `Error` naming the file when the
 * token, certificate or key cannot be read, or naming the option when a limit is out of range.
 */
export async function startCollector(options: CollectorOptions): Promise<RunningCollector> {
  checkLimits(options);
  const store = FlowStore.open(options.dbPath);
  let ingestor: Ingestor;
  let graph: SqliteGraphSource;
  try {
    graph = SqliteGraphSource.open(options.dbPath);
  } catch (error) {
    store.close();
    throw error;
  }
  try {
    ingestor = Ingestor.open(store, {
      holdNs: seconds(options.holdSeconds ?? 120),
      maxHeld: options.maxHeld,
      mergeGapNs: seconds(options.mergeGapSeconds ?? 30),
      slackNs: seconds(options.slackSeconds ?? 1),
      retentionNs: seconds(options.retentionSeconds ?? 3600),
      now: options.now,
    });
  } catch (error) {
    graph.close();
    store.close();
    throw error;
  }
  const backend: CollectorBackend = {
    ingest: (batch, cbor) => {
      try {
        return ingestor.ingest(batch, batchDigest(cbor));
      } catch (error) {
        if (error instanceof BatchConflictError) throw new HttpError(409, error.message);
        if (error instanceof ImplausibleBatchError) throw new HttpError(400, error.message);
        throw error;
      }
    },
    flows: (filter) => store.flows(filter),
    graph: cachedGraphSource(graph, GRAPH_CACHE_MS),
    tick: () => ingestor.tick(),
    close: () => {
      try {
        ingestor.tick();
      } finally {
        graph.close();
        store.close();
      }
    },
  };
  let server: CollectorServer;
  try {
    server = await serveCollector(options, backend);
  } catch (error) {
    graph.close();
    store.close();
    throw error;
  }
  return {
    url: server.url,
    ingestor,
    store,
    stats: server.stats,
    close: server.close,
    [Symbol.asyncDispose]: server.close,
  };
}

/**
 * Serves the collector's HTTP API (see the module documentation) in front of `backend`.
 *
 * @throws an `Error` naming the file when the token, certificate or key cannot be read, naming
 * the option when a limit is out of range, or the address when it cannot listen.
 */
export async function serveCollector(
  options: ServeOptions,
  backend: CollectorBackend,
): Promise<CollectorServer> {
  const logger = options.logger ?? new Log({ write: (line) => console.error(line) }).logger;
  const log: Logger = (level, message) => logger(level, printable(message));
  const limits = checkLimits(options);
  const token = options.token ?? (options.tokenFile && await readToken(options.tokenFile));
  const tls = await readTls(options);
  const hostname = options.hostname ?? "127.0.0.1";
  const port = options.port ?? DEFAULT_PORT;
  const open = !token && !isLoopback(hostname);
  const config: HandlerConfig = {
    ...limits,
    decode: batchDecoder({ maxRecords: limits.maxBatchRecords }),
    tokenDigest: token ? digest(token) : undefined,
    refuseFlows: open && !options.allowUnauthenticated,
    budget: new BodyBudget(limits.maxPendingBodyBytes),
    ingesting: 0,
    now: options.now ?? (() => BigInt(Date.now()) * 1_000_000n),
    log,
  };
  const handler = createHandler(backend, config);
  const headerMs = limits.headerTimeoutSeconds * 1000;
  const serverOptions = {
    headersTimeout: headerMs,
    // A backstop: the handler answers 408 itself when the body is late.
    requestTimeout: headerMs + limits.bodyTimeoutSeconds * 1000 + 5000,
    keepAliveTimeout: Math.min(5000, headerMs),
    connectionsCheckingInterval: Math.max(50, Math.min(1000, headerMs / 4)),
  };
  const server: Server = tls
    ? createHttpsServer({ ...tls, ...serverOptions, handshakeTimeout: headerMs })
    : createHttpServer(serverOptions);
  const inFlight = new Set<Promise<void>>();
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    const done = handler(request, response).catch((error) => {
      log("error", `Cannot answer ${request.method} ${request.url}: ${errorText(error)}`);
      response.destroy();
    });
    inFlight.add(done);
    done.finally(() => inFlight.delete(done));
  });
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, hostname, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    throw new Error(`Cannot listen on ${hostname}:${port}: ${errorText(error)}`, {
      cause: error,
    });
  }
  server.on("error", (error) => log("error", `HTTP server error: ${errorText(error)}`));
  const addr = server.address() as { address: string; port: number };
  const host = addr.address.includes(":") ? `[${addr.address}]` : addr.address;
  const url = `${tls ? "https" : "http"}://${host}:${addr.port}`;
  if (open) {
    log(
      "warn",
      options.allowUnauthenticated
        ? `Collector on ${url} has no token and listens beyond loopback: anyone who reaches it can store batches and read every flow (--allow-unauthenticated is set; set --token-file to require a token)`
        : `Collector on ${url} has no token and listens beyond loopback: anyone who reaches it can store batches; GET /v1/flows is refused (403) unless --allow-unauthenticated is set (set --token-file to require a token)`,
    );
  }
  const timer = setInterval(() => {
    try {
      backend.tick();
    } catch (error) {
      log("error", `Cannot expire held flows: ${errorText(error)}`);
    }
  }, options.tickMs ?? 1000);
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      clearInterval(timer);
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // Requests in flight get a grace period; a client still sending after it is cut off.
      let grace: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled([...inFlight]),
        new Promise((resolve) => grace = setTimeout(resolve, CLOSE_GRACE_MS)),
      ]);
      clearTimeout(grace);
      for (const socket of sockets) socket.destroy();
      await Promise.allSettled([...inFlight]);
      await stopped;
      await backend.close();
    })();
  const stats = (): CollectorStats => ({
    connections: sockets.size,
    ingesting: config.ingesting,
    pendingBodyBytes: config.budget.used,
  });
  return { url, stats, close };
}

type Limits = { -readonly [K in keyof typeof DEFAULT_LIMITS]: number };

interface HandlerConfig extends Limits {
  /** `decodeBatch` with `maxBatchRecords`. */
  decode: (bytes: Uint8Array) => DecodedBatch;
  tokenDigest?: Uint8Array;
  /** No token on an address beyond loopback, and reads not explicitly allowed. */
  refuseFlows: boolean;
  budget: BodyBudget;
  /** Batches being decompressed, decoded and stored now. */
  ingesting: number;
  now: () => bigint;
  log: Logger;
}

/** A response: status, one body, headers. */
interface Answer {
  status: number;
  body: string;
  headers: Record<string, string>;
}

function createHandler(backend: CollectorBackend, config: HandlerConfig) {
  return async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const url = new URL(request.url ?? "/", "http://collector");
    const path = url.pathname;
    const peer = request.socket.remoteAddress ?? "unknown";
    let answer: Answer;
    try {
      answer = await route(request, url, backend, config);
      if (answer.status === 0) answer = await receive(request, backend, config);
    } catch (error) {
      if (error instanceof HttpError) {
        if (error.status !== 404 && error.status !== 405) {
          config.log(
            "warn",
            `Refused ${request.method} ${path} from ${peer}: ${error.status} ${error.message}`,
          );
        }
        answer = text(error.status, error.message, error.headers);
      } else {
        config.log("error", `Cannot handle ${request.method} ${path}: ${errorText(error)}`);
        answer = text(500, `Cannot handle request: ${errorText(error)}`);
      }
    }
    await send(request, response, answer, config.bodyTimeoutSeconds * 1000);
  };
}

/** Answers what needs no body; status 0 means "read the batch" ({@linkcode receive}). */
function route(
  request: IncomingMessage,
  url: URL,
  backend: CollectorBackend,
  config: HandlerConfig,
): Answer | Promise<Answer> {
  const path = url.pathname;
  if (path === "/healthz") return text(200, "ok");
  const asset = webAsset(path);
  if (asset !== undefined) {
    allow(request, "GET");
    return { status: 200, ...asset, headers: { ...asset.headers } };
  }
  authorize(request, config.tokenDigest);
  if (path === "/v1/batches") {
    allow(request, "POST");
    return { status: 0, body: "", headers: {} };
  }
  if (path === "/metrics" && backend.metrics !== undefined) {
    allow(request, "GET");
    return backend.metrics().then((body) => ({
      status: 200,
      body,
      headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
    }));
  }
  if (path === "/v1/flows" || path === "/v1/graph" || path === "/v1/graph/flows") {
    allow(request, "GET");
    if (config.refuseFlows) {
      throw new HttpError(
        403,
        "Refusing to list flows without a token on an address beyond loopback (set --token-file, or --allow-unauthenticated to serve them to anyone)",
      );
    }
    if (path === "/v1/flows") return listFlows(url.searchParams, backend, config.now());
    if (backend.graph === undefined) {
      throw new HttpError(
        404,
        `No dependency map on this node: ${path} needs the flows (start the cluster node with --clickhouse-url)`,
      );
    }
    return graphResponse(path, url.searchParams, backend.graph, config.now()).then(
      (body) => ({ status: 200, body, headers: { "content-type": "application/json" } }),
      (error) => {
        throw error instanceof FilterError ? new HttpError(400, error.message) : error;
      },
    );
  }
  throw new HttpError(404, `No such endpoint ${path}: use /v1/batches, /v1/flows or /v1/graph`);
}

async function receive(
  request: IncomingMessage,
  backend: CollectorBackend,
  config: HandlerConfig,
): Promise<Answer> {
  const type = header(request, "content-type");
  if (type?.split(";")[0].trim().toLowerCase() !== CBOR_MEDIA_TYPE) {
    throw new HttpError(
      415,
      `Unsupported Content-Type ${JSON.stringify(type ?? "")}: send ${CBOR_MEDIA_TYPE}`,
    );
  }
  if (config.ingesting >= config.maxConcurrentIngests) throw busy(config);
  const body = await readBoundedBody(request, {
    maxBytes: config.maxBodyBytes,
    timeoutMs: config.bodyTimeoutSeconds * 1000,
    budget: config.budget,
  });
  try {
    if (config.ingesting >= config.maxConcurrentIngests) throw busy(config);
    config.ingesting++;
    try {
      const result = await ingest(request, body.bytes, backend, config);
      config.log(
        "debug",
        `${
          result.duplicate ? "Repeated" : "Stored"
        } batch ${result.hostname}:${result.sequence}: ` +
          `${result.flows} flows, ${result.attributed} attributed, ${result.pending} held, ` +
          `${result.settled} held flows settled` +
          (result.repeatedFlows > 0 ? `, ${result.repeatedFlows} flows already stored` : "") +
          (result.updatedFlows > 0 ? `, ${result.updatedFlows} open flows moved on` : ""),
      );
      return json(200, resultJson(result));
    } finally {
      config.ingesting--;
    }
  } finally {
    body.release();
  }
}

async function ingest(
  request: IncomingMessage,
  body: Uint8Array,
  backend: CollectorBackend,
  config: HandlerConfig,
): Promise<IngestResult> {
  const encoding = header(request, "content-encoding") ?? null;
  const cbor = await decodeContent(body, encoding, config.maxDecompressedBytes);
  let batch: DecodedBatch;
  try {
    batch = config.decode(cbor);
  } catch (error) {
    if (error instanceof WireLimitError) {
      throw new HttpError(413, `${error.message} (collector --max-batch-records)`);
    }
    if (error instanceof WireFormatError) throw new HttpError(400, error.message);
    throw error;
  }
  const key = header(request, IDEMPOTENCY_KEY_HEADER);
  const expected = idempotencyKey(batch.header.host.hostname, batch.header.sequence);
  if (key !== undefined && key !== expected) {
    throw new HttpError(
      400,
      `${IDEMPOTENCY_KEY_HEADER} ${JSON.stringify(key)} does not match the batch (${expected})`,
    );
  }
  try {
    checkNotInFuture(batch, config.now(), seconds(config.maxClockSkewSeconds));
  } catch (error) {
    if (error instanceof ImplausibleBatchError) throw new HttpError(400, error.message);
    throw error;
  }
  return await backend.ingest(batch, cbor, { bytes: body, encoding });
}

function busy(config: HandlerConfig): HttpError {
  return new HttpError(
    503,
    `Collector busy: ${config.ingesting} batches being stored, the limit is ${config.maxConcurrentIngests} (collector --max-concurrent-ingests); retry after ${RETRY_AFTER_SECONDS} s`,
    { "retry-after": String(RETRY_AFTER_SECONDS) },
  );
}

/**
 * Writes the answer. A body the handler did not read (a refusal before or while reading it) is
 * read and thrown away, up to {@linkcode MAX_DRAIN_BYTES} and `drainMs`, so that a client still
 * sending gets to read the answer (closing at once would reset the connection under it, and an
 * exporter would retry a batch refused for good); past either, the connection is closed. A
 * client too slow (408) is cut off at once.
 */
async function send(
  request: IncomingMessage,
  response: ServerResponse,
  answer: Answer,
  drainMs: number,
): Promise<void> {
  if (response.headersSent || response.destroyed) return;
  const unread = !request.complete && !request.destroyed;
  const cut = unread && answer.status === 408;
  const headers: Record<string, string> = { ...answer.headers };
  if (cut) headers["connection"] = "close";
  const finished = new Promise<void>((resolve) => {
    response.once("finish", resolve);
    response.once("close", resolve);
  });
  if (unread && !cut) drain(request, drainMs);
  response.writeHead(answer.status, headers);
  response.end(answer.body);
  await finished;
  if (cut) request.socket.destroy();
}

function drain(request: IncomingMessage, timeoutMs: number): void {
  const socket = request.socket;
  let drained = 0;
  const stop = setTimeout(() => socket.destroy(), timeoutMs);
  request.on("data", (chunk: Uint8Array) => {
    drained += chunk.length;
    if (drained > MAX_DRAIN_BYTES) socket.destroy();
  });
  request.once("end", () => clearTimeout(stop)); // the connection stays open for the next one
  request.once("close", () => clearTimeout(stop));
  request.resume();
}

async function listFlows(
  params: URLSearchParams,
  backend: CollectorBackend,
  nowNs: bigint,
): Promise<Answer> {
  const textFilter: Record<string, string> = {};
  for (const name of ["from", "to", "workload", "ip", "host", "status", "state", "limit"]) {
    const value = params.get(name);
    if (value !== null) textFilter[name] = value;
  }
  let filter;
  try {
    filter = parseFlowFilter(textFilter, nowNs);
  } catch (error) {
    if (error instanceof FilterError) throw new HttpError(400, error.message);
    throw error;
  }
  const limit = filter.limit ?? 1000;
  filter.limit = limit < 0 || limit > MAX_QUERY_ROWS ? MAX_QUERY_ROWS : limit; // -1: "all"
  const flows = await backend.flows(filter);
  return {
    status: 200,
    body: `[${flows.map(formatStoredFlowJson).join(",\n")}]\n`,
    headers: { "content-type": "application/json" },
  };
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name.toLowerCase()];
  return Array.isArray(value) ? value.join(", ") : value;
}

function authorize(request: IncomingMessage, tokenDigest: Uint8Array | undefined): void {
  if (tokenDigest === undefined) return;
  const value = header(request, "authorization") ?? "";
  const match = /^bearer\s+(.+)$/i.exec(value.trim());
  const challenge = { "www-authenticate": 'Bearer realm="flowexporter"' };
  if (match === null) {
    throw new HttpError(401, "Missing bearer token: send Authorization: Bearer <token>", challenge);
  }
  if (!timingSafeEqual(digest(match[1]), tokenDigest)) {
    throw new HttpError(401, "Wrong bearer token: check the exporter's token file", challenge);
  }
}

function allow(request: IncomingMessage, method: string): void {
  if (request.method !== method) {
    throw new HttpError(405, `Method ${request.method} not allowed: use ${method}`, {
      allow: method,
    });
  }
}

/**
 * True for a listen address only this host can reach: `localhost`, 127.0.0.0/8 and ::1 (also
 * IPv4-mapped). Any other (`0.0.0.0`, `::`, a host name) counts as reachable from beyond.
 *
 * @param hostname the address the collector listens on
 */
export function isLoopback(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^(::ffff:)?127\.\d+\.\d+\.\d+$/.test(h);
}

/** Hashing both sides first gives equal lengths, as `timingSafeEqual` needs. */
function digest(token: string): Uint8Array {
  return createHash("sha256").update(token).digest();
}

/** The limits with their defaults, each checked: a bad one names its option. */
function checkLimits(options: ServeOptions): Limits {
  const limits = { ...DEFAULT_LIMITS } as Limits;
  for (const name of Object.keys(DEFAULT_LIMITS) as (keyof Limits)[]) {
    const value = options[name];
    if (value === undefined) continue;
    const seconds = name.endsWith("Seconds");
    if (!Number.isFinite(value) || value <= 0 || (!seconds && !Number.isInteger(value))) {
      throw new RangeError(
        `Invalid collector limit ${name} ${value}: use a ${
          seconds ? "number of seconds above 0" : "whole number of at least 1"
        }`,
      );
    }
    limits[name] = value;
  }
  return limits;
}

async function readToken(path: string): Promise<string> {
  let token: string;
  try {
    token = (await Deno.readTextFile(path)).trim();
  } catch (error) {
    throw new Error(
      `Cannot read token file ${path}: ${errorText(error)} (set --token-file)`,
      { cause: error },
    );
  }
  if (token === "") throw new Error(`Cannot use token file ${path}: it is empty`);
  return token;
}

async function readTls(
  options: ServeOptions,
): Promise<{ cert: string; key: string } | undefined> {
  const { tlsCertFile: certFile, tlsKeyFile: keyFile } = options;
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (certFile === undefined || keyFile === undefined) {
    throw new Error("Cannot serve HTTPS: give both --tls-cert and --tls-key");
  }
  const read = async (path: string, flag: string) => {
    try {
      return await Deno.readTextFile(path);
    } catch (error) {
      throw new Error(`Cannot read ${path}: ${errorText(error)} (set ${flag})`, {
        cause: error,
      });
    }
  };
  return { cert: await read(certFile, "--tls-cert"), key: await read(keyFile, "--tls-key") };
}

function resultJson(r: IngestResult): Record<string, unknown> {
  return {
    status: r.duplicate ? "duplicate" : "stored",
    host: r.hostname,
    sequence: r.sequence,
    flows: r.flows,
    repeated_flows: r.repeatedFlows,
    updated_flows: r.updatedFlows,
    attributed: r.attributed,
    pending: r.pending,
    unattributed: r.unattributed,
    settled: r.settled,
  };
}

function json(status: number, body: unknown): Answer {
  return {
    status,
    body: JSON.stringify(body) + "\n",
    headers: { "content-type": "application/json" },
  };
}

/** A one-line text answer: whatever a client put into the message is escaped. */
function text(status: number, message: string, headers: Record<string, string> = {}): Answer {
  return {
    status,
    body: printable(message) + "\n",
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  };
}

function seconds(s: number): bigint {
  return BigInt(Math.round(s * 1e9));
}
