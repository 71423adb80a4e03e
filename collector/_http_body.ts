/**
 * Bounded reading of request bodies: the compressed size is checked against `Content-Length`
 * and counted while streaming, against the request's own limit and a budget shared by every
 * request; the body must arrive within a deadline; the decompressed size is capped while
 * inflating, a slice at a time. Neither a huge body, nor many slow ones, nor a gzip bomb is ever
 * held in memory, and inflating never holds the event loop for long.
 *
 * @module
 */

import type { IncomingMessage } from "node:http";
import { codingOfContentEncoding } from "../lib/body_coding.ts";
import { decompress, DecompressError } from "../lib/compression.ts";
import { concatBytes } from "../lib/bytes.ts";

/** A request the server refuses with `status` and a one-line `message`. */
export class HttpError extends Error {
  /** HTTP status to answer with. */
  readonly status: number;
  /** Extra response headers (e.g. `WWW-Authenticate`). */
  readonly headers: Record<string, string>;

  /** Creates the error; `message` is one sentence-case line. */
  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.headers = headers;
  }
}

/** Bytes of request bodies in memory, all requests together, under a limit. */
export class BodyBudget {
  /** The limit, bytes. */
  readonly limit: number;
  #used = 0;

  /** @param limit most bytes held at once */
  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes held now. */
  get used(): number {
    return this.#used;
  }

  /** Takes `bytes` from the budget; false (and nothing taken) when they do not fit. */
  take(bytes: number): boolean {
    if (this.#used + bytes > this.limit) return false;
    this.#used += bytes;
    return true;
  }

  /** Gives back what {@linkcode take} took. */
  give(bytes: number): void {
    this.#used -= bytes;
  }
}

/** Limits of {@linkcode readBoundedBody}. */
export interface BodyLimits {
  /** Largest body, bytes (413 past it). */
  maxBytes: number;
  /** Time the whole body may take, ms (408 past it). */
  timeoutMs: number;
  /** The budget shared with the other requests (503 when it runs out). */
  budget: BodyBudget;
}

/** A body read whole; its bytes count against the budget until `release()`. */
export interface BoundedBody {
  /** The body. */
  bytes: Uint8Array;
  /** Gives the body's bytes back to the budget; call once, when done with them. */
  release(): void;
}

/**
 * Reads the whole body of `request`: refuses one over `maxBytes` (413) before reading it when
 * `Content-Length` says so, and as soon as the count passes it otherwise; one that does not
 * fit in the shared budget (503 with `Retry-After`); one that takes longer than `timeoutMs`
 * (408). On a refusal the rest of the body is left unread.
 */
export function readBoundedBody(
  request: IncomingMessage,
  limits: BodyLimits,
): Promise<BoundedBody> {
  const { maxBytes, timeoutMs, budget } = limits;
  const declared = request.headers["content-length"];
  if (declared !== undefined && Number(declared) > maxBytes) {
    return Promise.reject(tooLarge(`Body of ${declared} bytes`, maxBytes, "--max-body-bytes"));
  }
  if (declared !== undefined && Number(declared) > budget.limit - budget.used) {
    return Promise.reject(overBudget(budget));
  }
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let total = 0;
    const stop = () => {
      clearTimeout(timer);
      request.off("data", onData);
      request.off("end", onEnd);
      request.off("error", onError);
      request.off("close", onClose);
    };
    const fail = (error: Error) => {
      stop();
      request.pause();
      budget.give(total);
      reject(error);
    };
    const timer = setTimeout(
      () =>
        fail(
          new HttpError(
            408,
            `Body not received within ${
              timeoutMs / 1000
            } s (${total} bytes came; collector --body-timeout-seconds)`,
          ),
        ),
      timeoutMs,
    );
    const onData = (chunk: Uint8Array) => {
      if (total + chunk.length > maxBytes) {
        return fail(tooLarge(`Body of more than ${maxBytes} bytes`, maxBytes, "--max-body-bytes"));
      }
      if (!budget.take(chunk.length)) return fail(overBudget(budget));
      total += chunk.length;
      chunks.push(chunk);
    };
    const onEnd = () => {
      stop();
      let released = false;
      resolve({
        bytes: concatBytes(chunks),
        release: () => {
          if (!released) budget.give(total);
          released = true;
        },
      });
    };
    const onError = (error: Error) =>
      fail(new HttpError(400, `Cannot read the body: ${error.message}`));
    const onClose = () => {
      if (!request.complete) fail(new HttpError(400, "Cannot read the body: the client left"));
    };
    request.on("data", onData);
    request.on("end", onEnd);
    request.on("error", onError);
    request.on("close", onClose);
  });
}

/**
 * Removes the content coding `encoding` (`zstd`, `gzip`, `identity` or none), producing at most
 * `maxBytes` bytes: 413 past it, 400 for a corrupt stream (or a zstd window over
 * lib/compression.ts's ZSTD_WINDOW_LOG_MAX), 415 for another coding.
 */
export async function decodeContent(
  body: Uint8Array,
  encoding: string | null,
  maxBytes: number,
): Promise<Uint8Array> {
  const coding = (encoding ?? "identity").trim().toLowerCase();
  if (coding === "identity" || coding === "") {
    if (body.length > maxBytes) {
      throw tooLarge(`Body of ${body.length} bytes`, maxBytes, "--max-decompressed-bytes");
    }
    return body;
  }
  const known = codingOfContentEncoding(coding);
  if (known === undefined) {
    throw new HttpError(
      415,
      `Unsupported Content-Encoding ${JSON.stringify(encoding)}: send zstd, gzip or identity`,
    );
  }
  try {
    return await decompress(body, known, maxBytes);
  } catch (error) {
    if (!(error instanceof DecompressError)) throw error;
    if (error.tooLarge) throw tooLarge("Decompressed body", maxBytes, "--max-decompressed-bytes");
    throw new HttpError(
      400,
      `Cannot decompress ${known} body of ${body.length} bytes: ${error.message}`,
    );
  }
}

function tooLarge(what: string, maxBytes: number, flag: string): HttpError {
  return new HttpError(413, `${what} exceeds the ${maxBytes}-byte limit (collector ${flag})`);
}

function overBudget(budget: BodyBudget): HttpError {
  return new HttpError(
    503,
    `Collector busy: ${budget.used} bytes of request bodies in memory, the limit is ${budget.limit} (collector --max-pending-body-bytes); retry after 5 s`,
    { "retry-after": "5" },
  );
}
