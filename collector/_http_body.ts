/**
 * Bounded reading of request bodies: the compressed size is checked against `Content-Length`
 * and counted while streaming, the decompressed size is capped while inflating, so neither a
 * huge body nor a gzip bomb is ever held in memory.
 *
 * @module
 */

import { gunzip } from "../lib/gzip.ts";

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

/**
 * Reads the whole body of `request`, refusing (413) one over `maxBytes` before reading it when
 * `Content-Length` says so, and as soon as the count passes it otherwise.
 */
export async function readBoundedBody(request: Request, maxBytes: number): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) {
    await request.body?.cancel();
    throw tooLarge(`Body of ${declared} bytes`, maxBytes, "--max-body-bytes");
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > maxBytes) {
      await reader.cancel();
      throw tooLarge(`Body of more than ${maxBytes} bytes`, maxBytes, "--max-body-bytes");
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0];
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.length;
  }
  return body;
}

/**
 * Removes the content coding `encoding` (`gzip`, `identity` or none), producing at most
 * `maxBytes` bytes: 413 past it, 400 for a corrupt gzip stream, 415 for another coding.
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
  if (coding !== "gzip" && coding !== "x-gzip") {
    throw new HttpError(
      415,
      `Unsupported Content-Encoding ${JSON.stringify(encoding)}: send gzip or identity`,
    );
  }
  try {
    return await gunzip(body, maxBytes); // on the thread pool, not the event loop
  } catch (error) {
    if ((error as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
      throw tooLarge("Decompressed body", maxBytes, "--max-decompressed-bytes");
    }
    const reason = (error as Error).message || "corrupt data";
    throw new HttpError(400, `Cannot decompress gzip body of ${body.length} bytes: ${reason}`);
  }
}

function tooLarge(what: string, maxBytes: number, flag: string): HttpError {
  return new HttpError(413, `${what} exceeds the ${maxBytes}-byte limit (collector ${flag})`);
}
