/**
 * Delivers compressed batches to the collector over HTTP(S), with retries.
 *
 * One `send` POSTs a batch with `Content-Type: application/cbor`, `Content-Encoding: zstd` (or
 * `gzip`) and `Idempotency-Key: <host>:<sequence>`, and classifies the answer: 2xx is delivered;
 * 4xx other than 408 and 429 is a permanent rejection; 408, 429, 5xx, timeouts and network errors
 * are retried with exponential backoff and full jitter, a bounded number of times. Requests go
 * through the agent's own HTTP/1.1 client, or `fetch` behind a proxy
 * ({@linkcode collectorTransport}).
 *
 * @module
 */

import { BODY_CODINGS, type BodyCoding } from "./body_coding.ts";
import { type Logger, silentLogger } from "./logger.ts";
import { sleep } from "./_sleep.ts";
import { CBOR_MEDIA_TYPE, IDEMPOTENCY_KEY_HEADER } from "./wire.ts";
import { errorText } from "./error_text.ts";
import { printable } from "./printable.ts";
import {
  collectorTransport,
  type HttpRequest,
  type HttpTransport,
  type StreamedBody,
} from "./http_client.ts";

/** Options of {@linkcode Sender.create}. */
export interface SenderOptions {
  /** Collector endpoint, `http://` or `https://`. */
  url: string;
  /** File holding a bearer token; re-read when it changes (rotated secrets). */
  tokenFile?: string;
  /** PEM file of CA certificates trusted in addition to the system roots. */
  caFile?: string;
  /** PEM client certificate chain for mutual TLS (with `keyFile`). */
  certFile?: string;
  /** PEM private key of `certFile`. */
  keyFile?: string;
  /** Per-request timeout, ms (default 30 s). */
  timeoutMs?: number;
  /** Attempts per `send`, the first included (default 5). */
  maxAttempts?: number;
  /** Backoff before the first retry is drawn from [0, baseDelayMs) (default 500 ms). */
  baseDelayMs?: number;
  /** Upper bound of any backoff, Retry-After included (default 30 s). */
  maxDelayMs?: number;
  /** `User-Agent` header, e.g. `flowexporter/0.1.0`. */
  userAgent?: string;
  /** Where to report retries and failures. */
  logger?: Logger;
  /** Replaces the HTTP client (tests). */
  transport?: HttpTransport;
  /** Replaces `Math.random` for the jitter (tests). */
  random?: () => number;
}

/** What became of one `send`. */
export type SendResult =
  | { outcome: "delivered"; status: number; attempts: number }
  | { outcome: "rejected"; status: number; attempts: number; reason: string }
  | { outcome: "failed"; attempts: number; reason: string }
  | { outcome: "aborted"; attempts: number; reason: string };

/** A problem in the sender's configuration: URL, TLS files. */
export class SenderConfigError extends Error {
  /**
   * @param message what is wrong and how to fix it
   * @param options standard error options (`cause`)
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SenderConfigError";
  }
}

/**
 * A batch body to send: its bytes, or the file that holds them (a spooled batch). A file is
 * opened anew for each attempt and sent in pieces as it is read, never held whole.
 */
export type BatchBody = Uint8Array | { readonly path: string };

const RETRYABLE_4XX = new Set([408, 429]);
const SNIPPET_CHARS = 200;

/**
 * POSTs batches to one collector.
 *
 * @example
 * ```ts
 * import { Sender } from "./sender.ts";
 * using sender = await Sender.create({ url: "https://collector:8443/v1/batches" });
 * declare const zstdBody: Uint8Array;
 * const result = await sender.send(zstdBody, "zstd", "node-1:42");
 * ```
 */
export class Sender {
  readonly #url: URL;
  readonly #options: SenderOptions;
  readonly #transport: HttpTransport;
  /** Releases the transport the sender made (not one passed in its options). */
  readonly #closeTransport: () => void;
  /** Aborted by close(): ends the requests in flight. */
  readonly #closed = new AbortController();
  readonly #random: () => number;
  readonly #log: Logger;
  #token: { mtimeMs: number; size: number; value: string } | undefined;

  private constructor(
    url: URL,
    options: SenderOptions,
    transport: HttpTransport,
    closeTransport: () => void,
  ) {
    this.#url = url;
    this.#options = options;
    this.#transport = transport;
    this.#closeTransport = closeTransport;
    this.#random = options.random ?? Math.random;
    this.#log = options.logger ?? silentLogger;
  }

  /**
   * Checks the URL and reads the TLS files.
   *
   * @param options collector URL, credentials, timeouts and retry bounds
   * @returns a sender; close it when done
   * @throws {SenderConfigError} for a bad URL (credentials in it included), an unreadable TLS
   *   file, or a certificate without its key
   */
  static async create(options: SenderOptions): Promise<Sender> {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch (error) {
      throw new SenderConfigError(
        `Invalid collector URL ${
          JSON.stringify(options.url)
        } (use http://host:port/path or https://…)`,
        { cause: error },
      );
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new SenderConfigError(
        `Unsupported collector URL scheme ${url.protocol} in ${options.url} (use http:// or https://)`,
      );
    }
    if (url.username !== "" || url.password !== "") {
      throw new SenderConfigError(
        `Cannot use credentials in the collector URL ${url.host}${url.pathname} (give a bearer token file instead)`,
      );
    }
    if ((options.certFile === undefined) !== (options.keyFile === undefined)) {
      throw new SenderConfigError(
        "Cannot use a client certificate without its key (give both the certificate and the key file)",
      );
    }
    const caCerts = options.caFile ? [await readPem(options.caFile, "CA certificate")] : undefined;
    const clientCertificate = options.certFile && options.keyFile
      ? {
        cert: await readPem(options.certFile, "client certificate"),
        key: await readPem(options.keyFile, "client key"),
      }
      : undefined;
    if (options.transport) return new Sender(url, options, options.transport, () => {});
    const { transport, close, proxyVariable } = collectorTransport(url, {
      caCerts,
      clientCertificate,
    });
    if (proxyVariable) {
      options.logger?.(
        "info",
        `Collector ${url.host}: ${proxyVariable} is set, so batches go through fetch, which applies it (and NO_PROXY)`,
      );
    }
    return new Sender(url, options, transport, close);
  }

  /** The collector URL. */
  get url(): string {
    return this.#url.href;
  }

  /**
   * Sends one batch, retrying transient failures up to `maxAttempts` times in all.
   *
   * @param body the compressed batch body, or the file holding it
   * @param coding how `body` is compressed (its `Content-Encoding`)
   * @param key the idempotency key, `<hostname>:<sequence>`
   * @param signal aborts the request in flight and any backoff
   * @returns delivered, rejected (do not retry), failed (retry later) or aborted
   */
  send(
    body: BatchBody,
    coding: BodyCoding,
    key: string,
    signal?: AbortSignal,
  ): Promise<SendResult> {
    const headers = new Headers({
      "Content-Type": CBOR_MEDIA_TYPE,
      "Content-Encoding": BODY_CODINGS[coding].contentEncoding,
      [IDEMPOTENCY_KEY_HEADER]: key,
    });
    return this.#exchange("POST", headers, body, `batch ${key}`, signal);
  }

  /**
   * Asks the collector for the batch URL's headers (a HEAD, with the credentials a batch would
   * carry), retried like a batch: whether it is reachable and takes the credentials, with
   * nothing ingested.
   *
   * @param signal aborts the request in flight and any backoff
   * @returns delivered (any 2xx), rejected, failed or aborted, as for {@linkcode send}
   */
  probe(signal?: AbortSignal): Promise<SendResult> {
    return this.#exchange("HEAD", new Headers(), undefined, "a probe", signal);
  }

  async #exchange(
    method: HttpRequest["method"],
    headers: Headers,
    body: BatchBody | undefined,
    what: string,
    signal?: AbortSignal,
  ): Promise<SendResult> {
    const maxAttempts = this.#options.maxAttempts ?? 5;
    const timeoutMs = this.#options.timeoutMs ?? 30_000;
    if (this.#options.userAgent) headers.set("User-Agent", this.#options.userAgent);
    let reason = "aborted before the first attempt";
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      if (signal?.aborted) return { outcome: "aborted", attempts: attempt - 1, reason };
      let retryAfterMs = 0;
      try {
        if (this.#options.tokenFile) {
          headers.set("Authorization", `Bearer ${await this.#readToken()}`);
        }
        const timeout = AbortSignal.timeout(timeoutMs);
        using upload = body === undefined ? undefined : await openBody(body);
        const answer = await this.#transport({
          method,
          url: this.#url,
          headers,
          body: upload?.body,
          signal: AbortSignal.any([this.#closed.signal, timeout, ...(signal ? [signal] : [])]),
        });
        if (answer.status >= 200 && answer.status < 300) {
          return { outcome: "delivered", status: answer.status, attempts: attempt };
        }
        const snippet = responseSnippet(answer.body);
        reason = `HTTP ${answer.status}${snippet ? `: ${snippet}` : ""}`;
        if (answer.status < 500 && !RETRYABLE_4XX.has(answer.status)) {
          return { outcome: "rejected", status: answer.status, attempts: attempt, reason };
        }
        retryAfterMs = parseRetryAfter(answer.headers.get("Retry-After"));
      } catch (error) {
        if (signal?.aborted || this.#closed.signal.aborted) {
          return { outcome: "aborted", attempts: attempt, reason: "aborted" };
        }
        reason = error instanceof DOMException && error.name === "TimeoutError"
          ? `no answer within ${timeoutMs} ms`
          : errorText(error);
      }
      if (attempt === maxAttempts) break;
      const delay = this.#backoff(attempt, retryAfterMs);
      this.#log(
        "debug",
        `Cannot deliver ${what} to ${this.#url.href} (attempt ${attempt} of ${maxAttempts}): ${reason}; retrying in ${delay} ms`,
      );
      if (!(await sleep(delay, signal))) return { outcome: "aborted", attempts: attempt, reason };
    }
    return { outcome: "failed", attempts: maxAttempts, reason };
  }

  /**
   * Backoff after failed attempt `attempt` (1-based): full jitter, a uniform draw from
   * [0, min(maxDelayMs, baseDelayMs * 2^(attempt - 1))), but no less than a bounded
   * Retry-After.
   *
   * @param attempt the attempt that just failed, from 1
   * @param retryAfterMs what the server asked for, 0 for nothing
   * @returns the delay, ms
   */
  backoffMs(attempt: number, retryAfterMs = 0): number {
    return this.#backoff(attempt, retryAfterMs);
  }

  /** Ends the requests in flight (they end as aborted) and releases the client. Safe to call twice. */
  close(): void {
    if (this.#closed.signal.aborted) return;
    this.#closed.abort();
    this.#closeTransport();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #backoff(attempt: number, retryAfterMs: number): number {
    const max = this.#options.maxDelayMs ?? 30_000;
    const ceiling = Math.min(max, (this.#options.baseDelayMs ?? 500) * 2 ** (attempt - 1));
    return Math.round(Math.max(this.#random() * ceiling, Math.min(retryAfterMs, max)));
  }

  async #readToken(): Promise<string> {
    const path = this.#options.tokenFile!;
    try {
      const info = await Deno.stat(path);
      const mtimeMs = info.mtime?.getTime() ?? 0;
      if (this.#token?.mtimeMs !== mtimeMs || this.#token.size !== info.size) {
        const value = (await Deno.readTextFile(path)).trim();
        if (value === "") throw new Error("the file is empty");
        if (this.#token) {
          this.#log("info", `Bearer token file ${path} changed: using the new token`);
        }
        this.#token = { mtimeMs, size: info.size, value };
      }
      return this.#token.value;
    } catch (error) {
      const why = readFailure(error);
      throw new Error(`Cannot read bearer token file ${path}: ${why} (check the token file path)`, {
        cause: error,
      });
    }
  }
}

/**
 * The request body of one attempt: the bytes, or the file opened, its length taken, and read
 * as the request goes out. Disposing of it closes the file, once, whether or not it was read.
 */
async function openBody(
  body: BatchBody,
): Promise<{ body: Uint8Array | StreamedBody } & Disposable> {
  if (body instanceof Uint8Array) return { body, [Symbol.dispose]() {} };
  const file = await Deno.open(body.path);
  try {
    const { size } = await file.stat();
    return {
      body: { length: size, read: (into) => file.read(into) },
      [Symbol.dispose]: () => file.close(),
    };
  } catch (error) {
    file.close();
    throw error;
  }
}

/** Why reading a file failed, for a one-line error. */
function readFailure(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such file";
  return errorText(error);
}

async function readPem(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    const why = readFailure(error);
    throw new SenderConfigError(`Cannot read ${what} ${path}: ${why} (check the ${what} path)`, {
      cause: error,
    });
  }
}

/**
 * The start of a response body for log lines, on one line and with control characters escaped
 * (the collector's text must not forge or split the agent's log lines). The transport keeps at
 * most {@linkcode import("./http_client.ts").DEFAULT_MAX_BODY_BYTES} of it.
 */
function responseSnippet(body: Uint8Array): string {
  const text = new TextDecoder().decode(body);
  const line = printable(text.replace(/\s+/g, " ").trim());
  return line.length > SNIPPET_CHARS ? `${line.slice(0, SNIPPET_CHARS)}…` : line;
}

/** Retry-After in ms: delta-seconds or an HTTP date; 0 when absent or unreadable. */
function parseRetryAfter(value: string | null): number {
  if (!value) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
}
