/**
 * The reference collector's HTTP server:
 * - `POST /v1/batches`: one gzip-compressed (or identity) CBOR batch per request, validated
 *   against `schema/flow_batch.cddl`, attributed and stored; a repeat of a stored batch
 *   (same host and sequence) answers 200 without storing it again;
 * - `GET /v1/flows`: stored flows as a JSON array, with the filters of `flowexporter query`
 *   (`from`, `to`, `workload`, `ip`, `host`, `status`, `limit`);
 * - `GET /healthz`: `ok`.
 *
 * Refusals carry one line of text: 400 malformed gzip, CBOR or schema; 401 missing or wrong
 * bearer token (when a token is configured); 413 body or decompressed body over its limit;
 * 415 wrong `Content-Type` or `Content-Encoding`. The server keeps serving after any of them.
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
  CBOR_MEDIA_TYPE,
  decodeBatch,
  type DecodedBatch,
  IDEMPOTENCY_KEY_HEADER,
  idempotencyKey,
  MAX_BATCH_BYTES,
  WireFormatError,
} from "../lib/wire.ts";
import type { Logger } from "../lib/logger.ts";
import { Log } from "../lib/log.ts";
import { decodeContent, HttpError, readBoundedBody } from "./_http_body.ts";
import { Ingestor, type IngestResult } from "./ingest.ts";
import { FilterError, formatStoredFlowJson, parseFlowFilter } from "./query.ts";
import { FlowStore } from "./store.ts";

/** Port the collector listens on by default. */
export const DEFAULT_PORT = 9470;

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
  /** Largest request body accepted, compressed. Default 16 MiB. */
  maxBodyBytes?: number;
  /** Largest body accepted after decompression. Default 64 MiB (the wire format's limit). */
  maxDecompressedBytes?: number;
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
   * requests are `warn`, failures `error`, one line per accepted batch `debug`.
   */
  logger?: Logger;
  /** Wall clock in ns since the epoch; injectable for tests. */
  now?: () => bigint;
  /** Interval of the hold-expiry and pruning tick, ms. Default 1000. */
  tickMs?: number;
}

/** A running collector. */
export interface RunningCollector {
  /** Base URL, e.g. `http://127.0.0.1:9470`. */
  readonly url: string;
  /** The ingest path (ownership map, held flows), for inspection. */
  readonly ingestor: Ingestor;
  /** The database. */
  readonly store: FlowStore;
  /** Stops accepting requests, waits for those in flight, closes the database. */
  close(): Promise<void>;
  /** Same as `close`. */
  [Symbol.asyncDispose](): Promise<void>;
}

const MAX_QUERY_ROWS = 100_000;

/**
 * Opens the database, replays its state and starts serving.
 *
 * @throws {StoreError} when the database cannot be opened; an `Error` naming the file when the
 * token, certificate or key cannot be read.
 */
export async function startCollector(options: CollectorOptions): Promise<RunningCollector> {
  const log = options.logger ?? new Log({ write: (line) => console.error(line) }).logger;
  const token = options.token ?? (options.tokenFile && await readToken(options.tokenFile));
  const tls = await readTls(options);
  const store = FlowStore.open(options.dbPath);
  let ingestor: Ingestor;
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
    store.close();
    throw error;
  }
  const handler = createHandler(ingestor, store, {
    tokenDigest: token ? digest(token) : undefined,
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024 * 1024,
    maxDecompressedBytes: options.maxDecompressedBytes ?? MAX_BATCH_BYTES,
    now: options.now ?? (() => BigInt(Date.now()) * 1_000_000n),
    log,
  });
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    const listening = Promise.withResolvers<Deno.NetAddr>();
    server = Deno.serve({
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? DEFAULT_PORT,
      ...tls,
      onListen: (addr) => listening.resolve(addr),
      onError: (error) => {
        log("error", `Cannot handle request: ${(error as Error).message}`);
        return text(500, "Internal error (see the collector log)");
      },
    }, handler);
    await listening.promise;
  } catch (error) {
    store.close();
    throw new Error(
      `Cannot listen on ${options.hostname ?? "127.0.0.1"}:${options.port ?? DEFAULT_PORT}: ${
        (error as Error).message
      }`,
      { cause: error },
    );
  }
  const addr = server.addr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const url = `${tls ? "https" : "http"}://${host}:${addr.port}`;
  const timer = setInterval(() => {
    try {
      ingestor.tick();
    } catch (error) {
      log("error", `Cannot expire held flows: ${(error as Error).message}`);
    }
  }, options.tickMs ?? 1000);
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      clearInterval(timer);
      await server.shutdown();
      try {
        ingestor.tick();
      } finally {
        store.close();
      }
    })();
  return { url, ingestor, store, close, [Symbol.asyncDispose]: close };
}

interface HandlerConfig {
  tokenDigest?: Uint8Array;
  maxBodyBytes: number;
  maxDecompressedBytes: number;
  now: () => bigint;
  log: Logger;
}

function createHandler(ingestor: Ingestor, store: FlowStore, config: HandlerConfig) {
  return async (request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
    const path = new URL(request.url).pathname;
    try {
      if (path === "/healthz") return text(200, "ok");
      authorize(request, config.tokenDigest);
      if (path === "/v1/batches") {
        allow(request, "POST");
        const result = await receiveBatch(request, ingestor, config);
        config.log(
          "debug",
          `${
            result.duplicate ? "Repeated" : "Stored"
          } batch ${result.hostname}:${result.sequence}: ` +
            `${result.flows} flows, ${result.attributed} attributed, ${result.pending} held, ` +
            `${result.settled} held flows settled` +
            (result.repeatedFlows > 0 ? `, ${result.repeatedFlows} flows already stored` : ""),
        );
        return json(200, resultJson(result));
      }
      if (path === "/v1/flows") {
        allow(request, "GET");
        return listFlows(new URL(request.url).searchParams, store, config.now());
      }
      throw new HttpError(404, `No such endpoint ${path}: use /v1/batches or /v1/flows`);
    } catch (error) {
      if (error instanceof HttpError) {
        if (error.status !== 404 && error.status !== 405) {
          config.log(
            "warn",
            `Refused ${request.method} ${path} from ${info.remoteAddr.hostname}: ${error.status} ${error.message}`,
          );
        }
        return text(error.status, error.message, error.headers);
      }
      config.log("error", `Cannot handle ${request.method} ${path}: ${(error as Error).message}`);
      return text(500, `Cannot handle request: ${(error as Error).message}`);
    }
  };
}

async function receiveBatch(
  request: Request,
  ingestor: Ingestor,
  config: HandlerConfig,
): Promise<IngestResult> {
  const type = request.headers.get("content-type");
  if (type?.split(";")[0].trim().toLowerCase() !== CBOR_MEDIA_TYPE) {
    await request.body?.cancel();
    throw new HttpError(
      415,
      `Unsupported Content-Type ${JSON.stringify(type ?? "")}: send ${CBOR_MEDIA_TYPE}`,
    );
  }
  const body = await readBoundedBody(request, config.maxBodyBytes);
  const cbor = await decodeContent(
    body,
    request.headers.get("content-encoding"),
    config.maxDecompressedBytes,
  );
  let batch: DecodedBatch;
  try {
    batch = decodeBatch(cbor);
  } catch (error) {
    if (error instanceof WireFormatError) throw new HttpError(400, error.message);
    throw error;
  }
  const key = request.headers.get(IDEMPOTENCY_KEY_HEADER);
  const expected = idempotencyKey(batch.header.host.hostname, batch.header.sequence);
  if (key !== null && key !== expected) {
    throw new HttpError(
      400,
      `${IDEMPOTENCY_KEY_HEADER} ${JSON.stringify(key)} does not match the batch (${expected})`,
    );
  }
  return ingestor.ingest(batch);
}

function listFlows(params: URLSearchParams, store: FlowStore, nowNs: bigint): Response {
  const textFilter: Record<string, string> = {};
  for (const name of ["from", "to", "workload", "ip", "host", "status", "limit"]) {
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
  const flows = store.flows(filter);
  return new Response(`[${flows.map(formatStoredFlowJson).join(",\n")}]\n`, {
    status: 200,
    headers: { "content-type": "application/json" },
  });
}

function authorize(request: Request, tokenDigest: Uint8Array | undefined): void {
  if (tokenDigest === undefined) return;
  const header = request.headers.get("authorization") ?? "";
  const match = /^bearer\s+(.+)$/i.exec(header.trim());
  const challenge = { "www-authenticate": 'Bearer realm="flowexporter"' };
  if (match === null) {
    throw new HttpError(401, "Missing bearer token: send Authorization: Bearer <token>", challenge);
  }
  if (!timingSafeEqual(digest(match[1]), tokenDigest)) {
    throw new HttpError(401, "Wrong bearer token: check the exporter's token file", challenge);
  }
}

function allow(request: Request, method: string): void {
  if (request.method !== method) {
    throw new HttpError(405, `Method ${request.method} not allowed: use ${method}`, {
      allow: method,
    });
  }
}

/** Hashing both sides first gives equal lengths, as `timingSafeEqual` needs. */
function digest(token: string): Uint8Array {
  return createHash("sha256").update(token).digest();
}

async function readToken(path: string): Promise<string> {
  let token: string;
  try {
    token = (await Deno.readTextFile(path)).trim();
  } catch (error) {
    throw new Error(
      `Cannot read token file ${path}: ${(error as Error).message} (set --token-file)`,
      {
        cause: error,
      },
    );
  }
  if (token === "") throw new Error(`Cannot use token file ${path}: it is empty`);
  return token;
}

async function readTls(
  options: CollectorOptions,
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
      throw new Error(`Cannot read ${path}: ${(error as Error).message} (set ${flag})`, {
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
    attributed: r.attributed,
    pending: r.pending,
    unattributed: r.unattributed,
    settled: r.settled,
  };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json" },
  });
}

function text(status: number, message: string, headers: Record<string, string> = {}): Response {
  return new Response(message + "\n", {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

function seconds(s: number): bigint {
  return BigInt(Math.round(s * 1e9));
}
