import assert from "node:assert/strict";
import { certificateAndKeyPem } from "./_certs.ts";
import {
  collectorTransport,
  type HttpAnswer,
  HttpProtocolError,
  type HttpRequest,
  httpTransport,
  MAX_HEAD_BYTES,
  type StreamedBody,
} from "../lib/http_client.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A request as the server read it: the head's lines and the body. */
interface Received {
  lines: string[];
  body: Uint8Array;
}

/** Reads one request: its head, then as many body bytes as its Content-Length says. */
async function readRequest(conn: Deno.Conn): Promise<Received> {
  let bytes = new Uint8Array(0);
  const more = async () => {
    const buffer = new Uint8Array(65_536);
    const n = await conn.read(buffer);
    if (n === null) throw new Error("the client closed the connection early");
    const joined = new Uint8Array(bytes.length + n);
    joined.set(bytes);
    joined.set(buffer.subarray(0, n), bytes.length);
    bytes = joined;
  };
  let end: number;
  while ((end = decoder.decode(bytes).indexOf("\r\n\r\n")) < 0) await more();
  const lines = decoder.decode(bytes.subarray(0, end)).split("\r\n");
  const length = Number(/^content-length: (\d+)$/im.exec(lines.join("\n"))?.[1] ?? 0);
  while (bytes.length < end + 4 + length) await more();
  return { lines, body: bytes.slice(end + 4, end + 4 + length) };
}

/**
 * A server on loopback that takes one connection at a time and runs `serve` on it, then closes
 * it; `fn` gets the URL of its batch path.
 */
async function withServer(
  serve: (conn: Deno.Conn) => Promise<void>,
  fn: (url: string, port: number) => Promise<void>,
  hostname = "127.0.0.1",
): Promise<void> {
  const listener = Deno.listen({ hostname, port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const served = (async () => {
    for await (const conn of listener) {
      try {
        await serve(conn);
      } catch {
        // the client went away: the test's assertions say whether it should have
      } finally {
        try {
          conn.close();
        } catch {
          // closed by serve
        }
      }
    }
  })();
  try {
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    await fn(`http://${host}:${port}/v1/batches`, port);
  } finally {
    listener.close();
    await served;
  }
}

/** A server answering every request with `answer`'s bytes, after reading the request. */
function answering(answer: string | Uint8Array) {
  return async (conn: Deno.Conn) => {
    await readRequest(conn);
    const bytes = typeof answer === "string" ? encoder.encode(answer) : answer;
    for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
  };
}

function post(url: string, body?: HttpRequest["body"], signal?: AbortSignal): HttpRequest {
  return {
    method: "POST",
    url: new URL(url),
    headers: new Headers({ "Content-Type": "application/cbor", "Idempotency-Key": "node-1:7" }),
    body,
    signal: signal ?? AbortSignal.timeout(10_000),
  };
}

/** A body read in pieces, each read recorded. */
function streamedBody(bytes: Uint8Array, reads: number[] = []): StreamedBody {
  let at = 0;
  return {
    length: bytes.length,
    read(into) {
      if (at === bytes.length) return Promise.resolve(null);
      const n = Math.min(into.length, bytes.length - at, 10_000 + reads.length);
      into.set(bytes.subarray(at, at + n));
      at += n;
      reads.push(n);
      return Promise.resolve(n);
    },
  };
}

function text(answer: HttpAnswer): string {
  return decoder.decode(answer.body);
}

Deno.test("httpTransport() writes one request per connection, its body whole or in pieces", async () => {
  const received: Received[] = [];
  const serve = async (conn: Deno.Conn) => {
    received.push(await readRequest(conn));
    await conn.write(encoder.encode("HTTP/1.1 204 No Content\r\n\r\n"));
  };
  const send = httpTransport();
  await withServer(serve, async (url, port) => {
    const bytes = encoder.encode("a batch");
    assert.equal((await send(post(`${url}?from=test`, bytes))).status, 204);
    const file = new Uint8Array(200_000).map((_, i) => i % 251);
    const reads: number[] = [];
    assert.equal((await send(post(url, streamedBody(file, reads)))).status, 204);
    assert.ok(reads.length >= 4, `read in pieces: ${reads}`);
    const probe = await send({ ...post(url), method: "HEAD" });
    assert.equal(probe.status, 204);

    // The request line, the client's Host, the caller's headers, the framing, then Connection.
    const head = (requestLine: string, ...framing: string[]) => [
      requestLine,
      `Host: 127.0.0.1:${port}`,
      "content-type: application/cbor",
      "idempotency-key: node-1:7",
      ...framing,
      "Connection: close",
    ];
    assert.deepEqual(
      received[0].lines,
      head("POST /v1/batches?from=test HTTP/1.1", "Content-Length: 7"),
    );
    assert.deepEqual(received[0].body, bytes);
    assert.deepEqual(
      received[1].lines,
      head("POST /v1/batches HTTP/1.1", "Content-Length: 200000"),
    );
    assert.deepEqual(received[1].body, file);
    assert.deepEqual(received[2].lines, head("HEAD /v1/batches HTTP/1.1"));
  });
  await withServer(serve, async (url, port) => {
    assert.equal((await send(post(url, new Uint8Array(1)))).status, 204);
    assert.equal(received[3].lines[1], `Host: [::1]:${port}`);
  }, "::1");
});

Deno.test("httpTransport() reads the answer's body by length, chunks or the connection's end, cut at its limit", async () => {
  const send = httpTransport({ maxBodyBytes: 10 });
  const cases: [string, string, number, string][] = [
    ["Content-Length", "HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nbad!", 400, "bad!"],
    [
      "chunks with an extension",
      "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nbus\r\n1\r\ny\r\n0\r\n\r\n",
      503,
      "busy",
    ],
    ["the connection's end", "HTTP/1.0 500 Oops\r\n\r\nserver error", 500, "server err"],
    [
      "a long Content-Length body",
      `HTTP/1.1 413 Big\r\nContent-Length: 99\r\n\r\n${"z".repeat(99)}`,
      413,
      "z".repeat(10),
    ],
    [
      "long chunks",
      `HTTP/1.1 413 Big\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\nabcdefgh\r\n0\r\n\r\n`,
      413,
      "12345678ab",
    ],
    [
      "a shorter body than said",
      "HTTP/1.1 502 Gone\r\nContent-Length: 50\r\n\r\nshort",
      502,
      "short",
    ],
    [
      "interim answers first",
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
      200,
      "ok",
    ],
    ["no body for 204", "HTTP/1.1 204 No Content\r\n\r\n", 204, ""],
  ];
  for (const [what, answer, status, body] of cases) {
    await withServer(answering(answer), async (url) => {
      const got = await send(post(url, new Uint8Array(3)));
      assert.equal(got.status, status, what);
      assert.equal(text(got), body, what);
    });
  }
  await withServer(
    answering("HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nX-Note:  spaced  \r\n\r\n"),
    async (url) => {
      const got = await send({ ...post(url), method: "HEAD" });
      assert.equal(got.headers.get("retry-after"), "7");
      assert.equal(got.headers.get("x-note"), "spaced");
    },
  );
});

Deno.test("httpTransport() refuses a malformed or oversized answer with one line that says what", async () => {
  const send = httpTransport();
  const cases: [string, string | Uint8Array, RegExp][] = [
    ["no answer", "", /^The collector closed the connection without an answer$/],
    [
      "half a head",
      "HTTP/1.1 200 OK\r\nContent-",
      /closed the connection within the response head/,
    ],
    [
      "not HTTP",
      "SSH-2.0-OpenSSH_9.2\r\n\r\n",
      /^Not an HTTP\/1\.1 status line: "SSH-2\.0-OpenSSH_9\.2"$/,
    ],
    ["HTTP/2", "HTTP/2 200\r\n\r\n", /^Not an HTTP\/1\.1 status line/],
    ["a status out of range", "HTTP/1.1 999 What\r\n\r\n", /^Not an HTTP\/1\.1 status line/],
    [
      "space before a colon",
      "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
      /^Invalid header field in the response: "Content-Length : 0"$/,
    ],
    ["a folded line", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  more\r\n\r\n", /^Invalid header field/],
    ["a field without a colon", "HTTP/1.1 200 OK\r\nnonsense\r\n\r\n", /^Invalid header field/],
    [
      "two lengths",
      "HTTP/1.1 400 No\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
      /^Invalid Content-Length in the response: 2, 3$/,
    ],
    [
      "a negative length",
      "HTTP/1.1 400 No\r\nContent-Length: -1\r\n\r\n",
      /^Invalid Content-Length/,
    ],
    [
      "a bad chunk size",
      "HTTP/1.1 400 No\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      /^Invalid chunk size in the response$/,
    ],
    [
      "a chunk longer than its size",
      "HTTP/1.1 400 No\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
      /^A response chunk is longer than its size$/,
    ],
    [
      "a switch of protocols",
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
      /switched protocols/,
    ],
    [
      "an endless head",
      `HTTP/1.1 200 OK\r\n${"X-Pad: ".padEnd(1000, "p")}\r\n`.repeat(MAX_HEAD_BYTES / 500),
      /^The response head is longer than 65536 bytes$/,
    ],
  ];
  for (const [what, answer, message] of cases) {
    await withServer(answering(answer), async (url) => {
      await assert.rejects(send(post(url, new Uint8Array(3))), (error: Error) => {
        assert.ok(error instanceof HttpProtocolError, `${what}: ${error}`);
        assert.match(error.message, message, what);
        assert.ok(!error.message.includes("\n"), what);
        return true;
      });
    });
  }
});

Deno.test("httpTransport() says which step failed: the connection, or a body shorter than its length", async () => {
  const send = httpTransport();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  await assert.rejects(
    send(post(`http://127.0.0.1:${port}/`, new Uint8Array(1))),
    { message: `Cannot connect to 127.0.0.1:${port}: Connection refused (os error 111)` },
  );
  await withServer(async (conn) => {
    await conn.read(new Uint8Array(4096));
  }, async (url) => {
    const short: StreamedBody = { length: 10, read: () => Promise.resolve(null) };
    await assert.rejects(send(post(url, short)), {
      message: "The body ended 10 bytes short of its length 10",
    });
  });
});

Deno.test("httpTransport() returns an answer that came before the body failed to go out", async () => {
  // A collector refusing early (401, 413) may answer before it reads the body: that answer is
  // what the agent acts on, not the failed upload.
  const { promise: answered, resolve } = Promise.withResolvers<void>();
  await withServer(async (conn) => {
    await conn.read(new Uint8Array(4096));
    await conn.write(encoder.encode("HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?"));
    resolve();
  }, async (url) => {
    let reads = 0;
    const body: StreamedBody = {
      length: 100,
      async read() {
        if (++reads === 1) await answered;
        throw new Error("the spool file went away");
      },
    };
    const got = await httpTransport()(post(url, body));
    assert.equal(got.status, 401);
    assert.equal(text(got), "who?");
  });
});

Deno.test("httpTransport() ends an exchange when its signal fires, and closes the connection", async () => {
  const { promise: closed, resolve } = Promise.withResolvers<number | null>();
  await withServer(async (conn) => {
    await readRequest(conn);
    // No answer: wait for the client to close its end.
    resolve(await conn.read(new Uint8Array(16)));
  }, async (url) => {
    const started = performance.now();
    await assert.rejects(
      httpTransport()(post(url, new Uint8Array(5), AbortSignal.timeout(100))),
      (error: Error) => error.name === "TimeoutError",
    );
    assert.ok(performance.now() - started < 5_000);
    assert.equal(await closed, null, "the client closed the connection");
    const aborted = new AbortController();
    aborted.abort(new Error("shutting down"));
    await assert.rejects(httpTransport()(post(url, undefined, aborted.signal)), /shutting down/);
  });
});

Deno.test("httpTransport() presents a client certificate for mutual TLS", async () => {
  const server = await certificateAndKeyPem({ cn: "collector", ips: ["127.0.0.1"] });
  const client = await certificateAndKeyPem({ cn: "agent-1" });
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-mtls-" });
  try {
    for (
      const [name, pem] of Object.entries({ server: server.cert, key: server.key, ca: client.cert })
    ) {
      await Deno.writeTextFile(`${dir}/${name}.pem`, pem);
    }
    const exchange = async (clientCertificate?: { cert: string; key: string }) => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const { port } = listener.addr as Deno.NetAddr;
      listener.close();
      // openssl's test server requires a client certificate signed by ca.pem (the agent's own,
      // self-signed) and relays the request to its stdout and its stdin to the client.
      const openssl = new Deno.Command("/usr/bin/openssl", {
        args: [
          "s_server",
          "-quiet",
          "-naccept",
          "1",
          "-accept",
          `127.0.0.1:${port}`,
          "-cert",
          `${dir}/server.pem`,
          "-key",
          `${dir}/key.pem`,
          "-Verify",
          "1",
          "-verify_return_error",
          "-CAfile",
          `${dir}/ca.pem`,
        ],
        stdin: "piped",
        stdout: "piped",
        stderr: "null",
      }).spawn();
      const relayed = (async () => {
        let request = "";
        const stdin = openssl.stdin.getWriter();
        for await (const piece of openssl.stdout) {
          request += decoder.decode(piece);
          if (request.endsWith("\r\n\r\nbatch")) {
            await stdin.write(encoder.encode("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"));
            await stdin.close();
          }
        }
        return request;
      })();
      try {
        const send = httpTransport({ caCerts: [server.cert], clientCertificate });
        const url = `https://127.0.0.1:${port}/v1/batches`;
        for (let tries = 0;; tries++) {
          try {
            return { answer: await send(post(url, encoder.encode("batch"))), relayed };
          } catch (error) {
            // openssl listens a moment after it starts
            if (!/Connection refused/.test(String(error)) || tries > 200) throw error;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      } finally {
        openssl.kill();
        await openssl.status;
        await relayed.catch(() => {});
      }
    };
    const { answer, relayed } = await exchange(client);
    assert.equal(answer.status, 202);
    assert.match(await relayed, /^POST \/v1\/batches HTTP\/1\.1\r\n[^]*\r\n\r\nbatch$/);
    await assert.rejects(exchange(), /CertificateRequired|certificate required/i);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("collectorTransport() takes fetch for a proxy named for the URL's scheme, and releases its client", async () => {
  const { cert } = await certificateAndKeyPem({ cn: "ca" });
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  const https = new URL("https://collector:8443/v1/batches");
  const http = new URL("http://collector:8080/v1/batches");
  assert.equal(
    collectorTransport(https, {}, env({ HTTP_PROXY: "http://p:3128" })).proxyVariable,
    undefined,
  );
  assert.equal(
    collectorTransport(http, {}, env({ HTTP_PROXY: "http://p:3128" })).proxyVariable,
    "HTTP_PROXY",
  );
  assert.equal(
    collectorTransport(https, {}, env({ all_proxy: "http://p:3128" })).proxyVariable,
    "all_proxy",
  );
  assert.equal(collectorTransport(https, {}, env({ HTTPS_PROXY: "" })).proxyVariable, undefined);
  // With a CA, fetch needs a TLS client of its own, which close() releases: a request after it
  // fails at once on the closed client.
  const proxied = collectorTransport(
    https,
    { caCerts: [cert] },
    env({ https_proxy: "http://p:3128" }),
  );
  assert.equal(proxied.proxyVariable, "https_proxy");
  proxied.close();
  await assert.rejects(
    proxied.transport({ ...post(https.href), signal: AbortSignal.timeout(5_000) }),
    /Bad resource ID/,
  );
});
