/**
 * The agent's HTTP/1.1 client: one request per connection, over `Deno.connect` or
 * `Deno.connectTls`, for the few exchanges the agent has with its collector.
 *
 * Deno's `fetch` cost a busy agent about 3.5 MiB of its peak RSS (its HTTP stack's code and
 * buffers; docs/benchmarks.md, 2026-12-02). This client writes a request head and a body of
 * known length, reads one response (its head bounded, its body cut at a limit), and closes the
 * connection. It speaks to one configured collector, so it has no connection pool, redirects,
 * cookies or HTTP/2. A collector behind a proxy (`HTTPS_PROXY` and the like in the environment)
 * is reached through `fetch`, which implements proxies: {@linkcode collectorTransport} picks.
 *
 * @example
 * ```ts
 * import { httpTransport } from "./http_client.ts";
 * const send = httpTransport();
 * const answer = await send({
 *   method: "POST",
 *   url: new URL("http://127.0.0.1:8080/v1/batches"),
 *   headers: new Headers({ "Content-Type": "application/cbor" }),
 *   body: new Uint8Array([0xa0]),
 *   signal: AbortSignal.timeout(30_000),
 * });
 * console.log(answer.status);
 * ```
 *
 * @module
 */

import { errorText } from "./error_text.ts";

/** A request body the client reads in pieces: a spooled batch file. */
export interface StreamedBody {
  /** Bytes the body has: its `Content-Length`. */
  readonly length: number;
  /** Reads the next bytes into `into`, like `Deno.FsFile.read`: a count, or null at the end. */
  read(into: Uint8Array): Promise<number | null>;
}

/** One exchange with a collector. */
export interface HttpRequest {
  method: "POST" | "HEAD";
  /** `http:` or `https:`; the path and query are sent, a fragment is not. */
  url: URL;
  /** Sent as given; `Host`, `Content-Length` and `Connection` are the client's. */
  headers: Headers;
  /** Nothing (no `Content-Length` for HEAD), bytes, or a body read in pieces. */
  body?: Uint8Array | StreamedBody;
  /** Ends the exchange: its reason is what the request rejects with. */
  signal: AbortSignal;
}

/** A collector's answer. */
export interface HttpAnswer {
  status: number;
  headers: Headers;
  /** The start of the body, at most the transport's `maxBodyBytes`. */
  body: Uint8Array;
}

/** Sends one request and resolves to its answer (tests inject their own). */
export type HttpTransport = (request: HttpRequest) => Promise<HttpAnswer>;

/** Options of {@linkcode httpTransport}. */
export interface HttpTransportOptions {
  /** PEM CA certificates trusted in addition to the system roots (`https:`). */
  caCerts?: string[];
  /** PEM client certificate chain and its key, for mutual TLS. */
  clientCertificate?: { cert: string; key: string };
  /** Most bytes of a response body kept; the rest is not read (default 16 KiB). */
  maxBodyBytes?: number;
}

/** A response head (status line and header fields) longer than this is refused. */
export const MAX_HEAD_BYTES = 64 * 1024;
/** Bytes of a streamed body read and written at a time. */
export const BODY_PIECE_BYTES = 64 * 1024;
/** Most bytes of a response body kept, unless the transport is told otherwise. */
export const DEFAULT_MAX_BODY_BYTES = 16 * 1024;
/** A chunk-size line of a chunked response longer than this is refused. */
const MAX_CHUNK_LINE_BYTES = 1024;

/** The peer broke HTTP/1.1: a malformed, oversized or missing response. */
export class HttpProtocolError extends Error {
  /**
   * @param message what the collector sent wrong
   */
  constructor(message: string) {
    super(message);
    this.name = "HttpProtocolError";
  }
}

/** The environment variables that name a proxy for a URL of each scheme, as `fetch` reads them. */
const PROXY_VARIABLES: Record<string, string[]> = {
  "http:": ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"],
  "https:": ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"],
};

/**
 * The transport for a collector: one on Deno's `fetch` when the environment names a proxy for
 * its scheme (`fetch` then also honours `NO_PROXY`; about 3.5 MiB more at a busy agent's peak),
 * else {@linkcode httpTransport}.
 *
 * @param url the collector's URL
 * @param options TLS settings and the body limit
 * @param env reads an environment variable (default: `Deno.env.get`)
 * @returns the transport, what releases it (fetch's TLS client; call it once, when done), and
 *   the proxy variable that chose fetch, if one did
 */
export function collectorTransport(
  url: URL,
  options: HttpTransportOptions = {},
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): { transport: HttpTransport; close: () => void; proxyVariable?: string } {
  const proxyVariable = PROXY_VARIABLES[url.protocol]?.find((name) => env(name));
  return proxyVariable === undefined
    ? { transport: httpTransport(options), close: () => {} }
    : { ...fetchTransport(options), proxyVariable };
}

/**
 * The same exchanges through Deno's `fetch`, for a collector behind a proxy. A body read in
 * pieces goes chunked.
 *
 * @param options extra CA certificates, a client certificate, the body limit
 * @returns a function sending one request, and what closes its TLS client
 */
function fetchTransport(
  options: HttpTransportOptions,
): { transport: HttpTransport; close: () => void } {
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const client = options.caCerts || options.clientCertificate
    ? Deno.createHttpClient({ caCerts: options.caCerts, ...options.clientCertificate })
    : undefined;
  const transport: HttpTransport = async ({ method, url, headers, body, signal }) => {
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined || body instanceof Uint8Array
          ? body
          : ReadableStream.from(piecesOf(body)),
        signal,
        client,
      } as RequestInit);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new Error(withCauses(error), { cause: error });
    }
    const start = await bodyStart(response, maxBodyBytes);
    return { status: response.status, headers: response.headers, body: start };
  };
  return { transport, close: () => client?.close() };
}

/** fetch's generic "fetch failed" followed by its causes (the proxy, TLS, the socket). */
function withCauses(error: unknown): string {
  const parts = [errorText(error)];
  for (let e = error; e instanceof Error && e.cause !== undefined && parts.length < 4;) {
    e = e.cause;
    parts.push(errorText(e));
  }
  return parts.join(": ");
}

/**
 * The pieces of a streamed body, read into `piece` (reused: each is to be used before the next
 * is read) or, without one, each into an array of its own.
 *
 * @throws {Error} when the body ends short of its length
 */
async function* piecesOf(body: StreamedBody, piece?: Uint8Array): AsyncGenerator<Uint8Array> {
  for (let left = body.length; left > 0;) {
    const into = piece ?? new Uint8Array(Math.min(BODY_PIECE_BYTES, left));
    const n = await body.read(into.subarray(0, Math.min(into.length, left)));
    if (n === null) {
      throw new Error(`The body ended ${left} bytes short of its length ${body.length}`);
    }
    left -= n;
    yield into.subarray(0, n);
  }
}

/** Up to `max` bytes of a response's body; the rest is not read. */
async function bodyStart(response: Response, max: number): Promise<Uint8Array> {
  const reader = response.body?.getReader();
  if (!reader) return new Uint8Array(0);
  const start = new Uint8Array(max);
  let length = 0;
  while (length < max) {
    const { done, value } = await reader.read();
    if (done) break;
    const n = Math.min(value.length, max - length);
    start.set(value.subarray(0, n), length);
    length += n;
  }
  await reader.cancel();
  return start.slice(0, length);
}

/**
 * An HTTP/1.1 transport with the given TLS settings.
 *
 * @param options extra CA certificates, a client certificate, the body limit
 * @returns a function sending one request per connection
 */
export function httpTransport(options: HttpTransportOptions = {}): HttpTransport {
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  return async (request) => {
    const { signal } = request;
    signal.throwIfAborted();
    const conn = await connect(request.url, options, signal);
    // Closing the connection is what ends a read or write in flight when the signal fires.
    let open = true;
    const close = () => {
      if (open) {
        open = false;
        conn.close();
      }
    };
    signal.addEventListener("abort", close, { once: true });
    if (signal.aborted) close();
    try {
      if (request.url.protocol === "https:") await handshake(conn as Deno.TlsConn, request.url);
      const reader = new ResponseReader(conn);
      try {
        await writeRequest(conn, request);
      } catch (error) {
        // A collector may answer and close before it has read the whole body (a refusal):
        // its answer, when it came, says more than the broken pipe.
        if (signal.aborted) throw error;
        const early = await reader.readAnswer(request.method, maxBodyBytes).catch(() => undefined);
        if (early) return early;
        throw error;
      }
      return await reader.readAnswer(request.method, maxBodyBytes);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw error;
    } finally {
      signal.removeEventListener("abort", close);
      close();
    }
  };
}

async function connect(
  url: URL,
  options: HttpTransportOptions,
  signal: AbortSignal,
): Promise<Deno.Conn> {
  // An IPv6 literal is bracketed in a URL, not in a socket address.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const tls = url.protocol === "https:";
  const port = url.port === "" ? (tls ? 443 : 80) : Number(url.port);
  const where = `${url.hostname}:${port}`;
  const cannotConnect = (error: unknown): never => {
    throw new Error(`Cannot connect to ${where}: ${errorText(error)}`, { cause: error });
  };
  const connecting: Promise<Deno.Conn> = tls
    ? Deno.connectTls({ hostname, port, caCerts: options.caCerts, ...options.clientCertificate })
    : Deno.connect({ hostname, port, signal });
  return await untilAborted(connecting.catch(cannotConnect), signal, (late) => late.close());
}

/** Completes a TLS connection's handshake, which is lazy: a certificate error is named as one. */
async function handshake(conn: Deno.TlsConn, url: URL): Promise<void> {
  try {
    await conn.handshake();
  } catch (error) {
    throw new Error(`TLS handshake with ${url.host} failed: ${errorText(error)}`, { cause: error });
  }
}

/**
 * `promise`, or the signal's reason as soon as it fires; what the promise yields after that is
 * handed to `discard`.
 */
function untilAborted<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  discard: (late: T) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener("abort", abort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", abort);
        if (signal.aborted) discard(value);
        else resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", abort);
        reject(signal.aborted ? signal.reason : error);
      },
    );
  });
}

const encoder = new TextEncoder();

async function writeRequest(conn: Deno.Conn, request: HttpRequest): Promise<void> {
  const { url, body } = request;
  const lines = [`${request.method} ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`];
  for (const [name, value] of request.headers) {
    if (!/^(host|content-length|connection|transfer-encoding)$/.test(name)) {
      lines.push(`${name}: ${value}`);
    }
  }
  if (body !== undefined) lines.push(`Content-Length: ${body.length}`);
  lines.push("Connection: close", "", "");
  await writeAll(conn, encoder.encode(lines.join("\r\n")));
  if (body instanceof Uint8Array) {
    await writeAll(conn, body);
  } else if (body !== undefined) {
    const piece = new Uint8Array(Math.min(BODY_PIECE_BYTES, Math.max(body.length, 1)));
    for await (const bytes of piecesOf(body, piece)) await writeAll(conn, bytes);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

const CRLF_CRLF = [13, 10, 13, 10];

/** Buffered reads of one response from a connection. */
class ResponseReader {
  readonly #conn: Deno.Conn;
  #buffer = new Uint8Array(4096);
  #start = 0;
  #end = 0;
  #eof = false;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** The final answer: interim (1xx) answers are read past. */
  async readAnswer(method: HttpRequest["method"], maxBodyBytes: number): Promise<HttpAnswer> {
    for (;;) {
      const { status, headers } = await this.#readHead();
      if (status === 101) {
        throw new HttpProtocolError("The collector switched protocols (HTTP 101) unasked");
      }
      if (status < 200) continue;
      const bodiless = method === "HEAD" || status === 204 || status === 304;
      const body = bodiless ? new Uint8Array(0) : await this.#readBody(headers, maxBodyBytes);
      return { status, headers, body };
    }
  }

  async #readHead(): Promise<{ status: number; headers: Headers }> {
    let searched = this.#start;
    for (;;) {
      const at = indexOf(this.#buffer, CRLF_CRLF, Math.max(this.#start, searched - 3), this.#end);
      if (at >= 0) {
        const head = latin1.decode(this.#buffer.subarray(this.#start, at));
        this.#start = at + 4;
        return parseHead(head);
      }
      searched = this.#end;
      if (this.#end - this.#start >= MAX_HEAD_BYTES) {
        throw new HttpProtocolError(`The response head is longer than ${MAX_HEAD_BYTES} bytes`);
      }
      if (!(await this.#fill(MAX_HEAD_BYTES))) {
        throw new HttpProtocolError(
          this.#end === this.#start
            ? "The collector closed the connection without an answer"
            : "The collector closed the connection within the response head",
        );
      }
    }
  }

  async #readBody(headers: Headers, max: number): Promise<Uint8Array> {
    const coding = headers.get("transfer-encoding");
    if (coding !== null) {
      // Not chunked last: the body runs to the end of the connection (RFC 9112, section 6.3).
      if (!/(^|,)\s*chunked\s*$/i.test(coding)) return await this.#readBytes(max);
      return await this.#readChunked(max);
    }
    const length = headers.get("content-length");
    if (length === null) return await this.#readBytes(max);
    // Repeated fields are joined with ", "; they must agree (RFC 9110, section 8.6).
    const values = new Set(length.split(",").map((v) => v.trim()));
    const [value] = values;
    if (values.size !== 1 || !/^\d{1,15}$/.test(value)) {
      throw new HttpProtocolError(`Invalid Content-Length in the response: ${length.slice(0, 40)}`);
    }
    return await this.#readBytes(Math.min(Number(value), max));
  }

  /** Up to `count` bytes; fewer when the connection ends first. */
  async #readBytes(count: number): Promise<Uint8Array> {
    while (this.#end - this.#start < count && await this.#fill(count)) {
      // filled
    }
    const n = Math.min(count, this.#end - this.#start);
    const bytes = this.#buffer.slice(this.#start, this.#start + n);
    this.#start += n;
    return bytes;
  }

  async #readChunked(max: number): Promise<Uint8Array> {
    const pieces: Uint8Array[] = [];
    let total = 0;
    while (total < max) {
      const line = await this.#readLine(MAX_CHUNK_LINE_BYTES);
      const size = /^([0-9a-fA-F]{1,12})\s*(;.*)?$/.exec(line);
      if (!size) throw new HttpProtocolError("Invalid chunk size in the response");
      const length = parseInt(size[1], 16);
      if (length === 0) break;
      const piece = await this.#readBytes(Math.min(length, max - total));
      pieces.push(piece);
      total += piece.length;
      if (piece.length < length) break; // cut at the limit, or the connection ended
      if ((await this.#readLine(2)) !== "") {
        throw new HttpProtocolError("A response chunk is longer than its size");
      }
    }
    const body = new Uint8Array(total);
    let at = 0;
    for (const piece of pieces) {
      body.set(piece, at);
      at += piece.length;
    }
    return body;
  }

  /** A line without its CRLF, of at most `max` bytes. */
  async #readLine(max: number): Promise<string> {
    for (;;) {
      const at = indexOf(this.#buffer, CRLF_CRLF.slice(0, 2), this.#start, this.#end);
      if (at >= 0) {
        const line = latin1.decode(this.#buffer.subarray(this.#start, at));
        this.#start = at + 2;
        return line;
      }
      if (this.#end - this.#start > max) {
        throw new HttpProtocolError("A line of the chunked response is too long");
      }
      if (!(await this.#fill(max + 2))) {
        throw new HttpProtocolError("The collector closed the connection within a chunked body");
      }
    }
  }

  /**
   * Reads more bytes, making room for up to `want` buffered; false at the end of the
   * connection.
   */
  async #fill(want: number): Promise<boolean> {
    if (this.#eof) return false;
    if (this.#start > 0) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (this.#end === this.#buffer.length) {
      const grown = new Uint8Array(Math.max(this.#buffer.length * 2, Math.min(want, 1 << 20)));
      grown.set(this.#buffer.subarray(0, this.#end));
      this.#buffer = grown;
    }
    const n = await this.#conn.read(this.#buffer.subarray(this.#end));
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  }
}

const latin1 = new TextDecoder("latin1");

/** The status and header fields of a response head (without its blank line). */
function parseHead(head: string): { status: number; headers: Headers } {
  const [statusLine, ...fields] = head.split("\r\n");
  const status = /^HTTP\/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?$/.exec(statusLine);
  if (!status) {
    throw new HttpProtocolError(
      `Not an HTTP/1.1 status line: ${JSON.stringify(statusLine.slice(0, 40))}`,
    );
  }
  const headers = new Headers();
  for (const field of fields) {
    const colon = field.indexOf(":");
    // No space before the colon, no folded lines (RFC 9112, section 5).
    if (colon <= 0 || /[\s]/.test(field.slice(0, colon))) {
      throw new HttpProtocolError(
        `Invalid header field in the response: ${JSON.stringify(field.slice(0, 40))}`,
      );
    }
    try {
      headers.append(field.slice(0, colon), field.slice(colon + 1).trim());
    } catch {
      throw new HttpProtocolError(
        `Invalid header field in the response: ${JSON.stringify(field.slice(0, 40))}`,
      );
    }
  }
  return { status: Number(status[1]), headers };
}

/** Where `needle` starts in `haystack[from, to)`, or -1. */
function indexOf(haystack: Uint8Array, needle: number[], from: number, to: number): number {
  for (let i = haystack.indexOf(needle[0], from); i >= 0 && i <= to - needle.length;) {
    let k = 1;
    while (k < needle.length && haystack[i + k] === needle[k]) k++;
    if (k === needle.length) return i;
    i = haystack.indexOf(needle[0], i + 1);
  }
  return -1;
}
