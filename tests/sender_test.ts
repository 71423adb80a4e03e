import assert from "node:assert/strict";
import { compress, decompress } from "../lib/compression.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";
import { Sender, SenderConfigError, type SenderOptions } from "../lib/sender.ts";
import { BODY_PIECE_BYTES } from "../lib/http_client.ts";
import {
  decodeBatch,
  encodeBatchParts,
  encodeFlow,
  MAX_BATCH_BYTES,
  SCHEMA_VERSION,
} from "../lib/wire.ts";

type Handler = (request: Request) => Response | Promise<Response>;

/** Runs `fn` against a collector on 127.0.0.1, an ephemeral port. */
async function withCollector(
  handler: Handler,
  fn: (url: string) => Promise<void>,
  tls?: { cert: string; key: string },
) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {}, ...tls },
    handler,
  );
  try {
    await fn(`${tls ? "https" : "http"}://127.0.0.1:${server.addr.port}/v1/batches`);
  } finally {
    await server.shutdown();
  }
}

async function sender(url: string, options: Partial<SenderOptions> = {}, logs: string[] = []) {
  return await Sender.create({
    url,
    baseDelayMs: 10,
    maxDelayMs: 1000,
    logger: (level, message) => logs.push(`${level}: ${message}`),
    ...options,
  });
}

const records = [syntheticFlow(1), syntheticFlow(7)];
const header = {
  schemaVersion: SCHEMA_VERSION,
  exporterVersion: "test",
  host: { hostname: "node-1", workloadId: "" },
  sequence: 42,
  windowStartNs: 1n,
  windowEndNs: 2n,
  recordCount: records.length,
  clockOffsetNs: 0n,
  loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
};
const body = await compress(encodeBatchParts(header, records.map(encodeFlow)), "zstd");

Deno.test("send() retries a 503 with exponential backoff, then delivers", async () => {
  const times: number[] = [];
  await withCollector(() => {
    times.push(performance.now());
    return new Response("busy", { status: times.length <= 2 ? 503 : 200 });
  }, async (url) => {
    const logs: string[] = [];
    using s = await sender(url, { baseDelayMs: 40, random: () => 0.999 }, logs);
    const result = await s.send(body, "zstd", "node-1:42");
    assert.deepEqual(result, { outcome: "delivered", status: 200, attempts: 3 });
    assert.ok(times[1] - times[0] >= 35, `first backoff ${times[1] - times[0]} ms`);
    assert.ok(times[2] - times[1] >= 75, `second backoff ${times[2] - times[1]} ms`);
    assert.equal(logs.length, 2);
    assert.match(
      logs[0],
      /^debug: Cannot deliver batch node-1:42 to .* \(attempt 1 of 5\): HTTP 503: busy; retrying in 40 ms$/,
    );
  });
});

Deno.test("send() gives up at once on a 400 and reports the collector's reason", async () => {
  let hits = 0;
  await withCollector(() => {
    hits++;
    return new Response("Unsupported schema version 7 (this collector reads 1 to 3)", {
      status: 400,
    });
  }, async (url) => {
    using s = await sender(url);
    assert.deepEqual(await s.send(body, "zstd", "node-1:42"), {
      outcome: "rejected",
      status: 400,
      attempts: 1,
      reason: "HTTP 400: Unsupported schema version 7 (this collector reads 1 to 3)",
    });
    assert.equal(hits, 1);
  });
});

Deno.test("a collector's answer cannot forge or colour the agent's log lines, nor flood it", async () => {
  await withCollector(
    () =>
      new Response(
        "refused\nflowexporter: forged line\u001b[2J\u2028" + "x".repeat(10 * 1024 * 1024),
        { status: 409 },
      ),
    async (url) => {
      using s = await sender(url);
      const result = await s.send(body, "zstd", "node-1:42");
      assert.equal(result.outcome, "rejected");
      const reason = (result as { reason: string }).reason;
      // Whitespace (the newline, U+2028) becomes a space, other controls escapes; 200 characters.
      const line = `refused flowexporter: forged line\\u001b[2J ${"x".repeat(200)}`.slice(0, 200);
      assert.equal(reason, `HTTP 409: ${line}…`);
      assert.ok(!["\n", "\r", "\u001b", "\u2028"].some((c) => reason.includes(c)));
    },
  );
});

Deno.test("send() retries 408 and 429 and honours Retry-After up to its cap", async () => {
  const times: number[] = [];
  await withCollector(() => {
    times.push(performance.now());
    if (times.length === 1) return new Response(null, { status: 408 });
    if (times.length === 2) {
      return new Response(null, { status: 429, headers: { "Retry-After": "0.2" } });
    }
    return new Response(null, { status: 204 });
  }, async (url) => {
    using s = await sender(url, { random: () => 0 });
    assert.equal((await s.send(body, "zstd", "node-1:42")).outcome, "delivered");
    assert.ok(times[2] - times[1] >= 190, `waited ${times[2] - times[1]} ms after a 429`);
    assert.equal(s.backoffMs(1, 60_000), 1000, "Retry-After is bounded by maxDelayMs");
  });
});

Deno.test("send() posts zstd CBOR with the idempotency key and a bearer token re-read when it changes", async () => {
  const dir = await Deno.makeTempDir();
  const tokenFile = `${dir}/token`;
  await Deno.writeTextFile(tokenFile, "first-token\n");
  const seen: { headers: Headers; batch: ReturnType<typeof decodeBatch> }[] = [];
  try {
    await withCollector(async (request) => {
      const raw = new Uint8Array(await request.arrayBuffer());
      seen.push({
        headers: request.headers,
        batch: decodeBatch(await decompress(raw, "zstd", MAX_BATCH_BYTES)),
      });
      return new Response(null, { status: 202 });
    }, async (url) => {
      const logs: string[] = [];
      using s = await sender(url, { tokenFile, userAgent: "flowexporter/test" }, logs);
      assert.equal((await s.send(body, "zstd", "node-1:42")).outcome, "delivered");
      await Deno.writeTextFile(tokenFile, "second-token-rotated\n");
      assert.equal((await s.send(body, "zstd", "node-1:43")).outcome, "delivered");
      assert.ok(logs.includes(`info: Bearer token file ${tokenFile} changed: using the new token`));
    });
    const [first, second] = seen;
    assert.equal(first.headers.get("content-type"), "application/cbor");
    assert.equal(first.headers.get("content-encoding"), "zstd");
    assert.equal(first.headers.get("idempotency-key"), "node-1:42");
    assert.equal(first.headers.get("user-agent"), "flowexporter/test");
    assert.equal(first.headers.get("authorization"), "Bearer first-token");
    assert.deepEqual(first.batch, { header, flows: records });
    assert.equal(second.headers.get("authorization"), "Bearer second-token-rotated");
    assert.equal(second.headers.get("idempotency-key"), "node-1:43");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("network errors, timeouts and a missing token are retried, then reported as failed", async (t) => {
  await t.step("connection refused", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close();
    using s = await sender(`http://127.0.0.1:${port}/`, { maxAttempts: 3 });
    const result = await s.send(body, "zstd", "node-1:42");
    assert.equal(result.outcome, "failed");
    assert.equal(result.attempts, 3);
  });
  await t.step("no answer within the timeout", async () => {
    const { promise: release, resolve } = Promise.withResolvers<void>();
    await withCollector(async () => {
      await release;
      return new Response(null);
    }, async (url) => {
      using s = await sender(url, { maxAttempts: 2, timeoutMs: 50 });
      assert.deepEqual(await s.send(body, "zstd", "node-1:42"), {
        outcome: "failed",
        attempts: 2,
        reason: "no answer within 50 ms",
      });
      resolve();
    });
  });
  await t.step("token file missing", async () => {
    await withCollector(() => new Response(null), async (url) => {
      using s = await sender(url, { maxAttempts: 2, tokenFile: "/nonexistent/token" });
      assert.deepEqual(await s.send(body, "zstd", "node-1:42"), {
        outcome: "failed",
        attempts: 2,
        reason:
          "Cannot read bearer token file /nonexistent/token: no such file (check the token file path)",
      });
    });
  });
});

Deno.test("an abort signal ends send() during its backoff", async () => {
  await withCollector(() => new Response(null, { status: 503 }), async (url) => {
    using s = await sender(url, {
      maxAttempts: 10,
      baseDelayMs: 5000,
      maxDelayMs: 5000,
      random: () => 1,
    });
    const started = performance.now();
    const result = await s.send(body, "zstd", "node-1:42", AbortSignal.timeout(100));
    assert.equal(result.outcome, "aborted");
    assert.ok(performance.now() - started < 2000);
  });
});

Deno.test("send() speaks https to a collector signed by a private CA", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const openssl = async (...args: string[]) => {
      const out = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
    };
    await openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "1",
      "-subj",
      "/CN=test CA",
    );
    await openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "server.key",
      "-out",
      "server.csr",
      "-subj",
      "/CN=127.0.0.1",
    );
    await Deno.writeTextFile(`${dir}/san.ext`, "subjectAltName=IP:127.0.0.1\n");
    await openssl(
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "server.pem",
      "-days",
      "1",
      "-extfile",
      "san.ext",
    );
    const tls = {
      cert: await Deno.readTextFile(`${dir}/server.pem`),
      key: await Deno.readTextFile(`${dir}/server.key`),
    };
    await withCollector(() => new Response(null, { status: 200 }), async (url) => {
      using trusted = await sender(url, { caFile: `${dir}/ca.pem` });
      assert.equal((await trusted.send(body, "zstd", "node-1:42")).outcome, "delivered");
      using untrusted = await sender(url, { maxAttempts: 1 });
      const result = await untrusted.send(body, "zstd", "node-1:42");
      assert.equal(result.outcome, "failed");
      assert.match((result as { reason: string }).reason, /certificate/i);
    }, tls);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Sender.create() explains a bad URL or TLS file", async () => {
  await assert.rejects(() => Sender.create({ url: "ftp://collector/" }), {
    name: "SenderConfigError",
    message: "Unsupported collector URL scheme ftp: in ftp://collector/ (use http:// or https://)",
  });
  await assert.rejects(() => Sender.create({ url: "https://agent:s3cret@collector:8443/v1" }), {
    name: "SenderConfigError",
    message:
      "Cannot use credentials in the collector URL collector:8443/v1 (give a bearer token file instead)",
  });
  await assert.rejects(
    () => Sender.create({ url: "http://127.0.0.1:1/", caFile: "/nonexistent/ca.pem" }),
    {
      message:
        "Cannot read CA certificate /nonexistent/ca.pem: no such file (check the CA certificate path)",
    },
  );
  await assert.rejects(
    () => Sender.create({ url: "https://127.0.0.1:1/", certFile: "/x.pem" }),
    SenderConfigError,
  );
});

Deno.test("send() streams a batch file, read anew for each attempt and closed after each", async () => {
  const dir = await Deno.makeTempDir();
  // Five upload chunks and a bit: the body arrives in several.
  const file = new Uint8Array(5 * 65_536 + 100);
  for (let i = 0; i < file.length; i += 65_536) {
    crypto.getRandomValues(file.subarray(i, i + 65_536));
  }
  const path = `${dir}/batch.cbor.zst`;
  await Deno.writeFile(path, file);
  const received: Uint8Array[] = [];
  try {
    await withCollector(async (request) => {
      received.push(new Uint8Array(await request.arrayBuffer()));
      // The first attempt fails after reading the whole body: the retry must send it again.
      return new Response(null, { status: received.length === 1 ? 503 : 200 });
    }, async (url) => {
      using s = await sender(url);
      assert.deepEqual(await s.send({ path }, "zstd", "node-1:42"), {
        outcome: "delivered",
        status: 200,
        attempts: 2,
      });
      // A file gone is a failed round (the spool drops it when it leases it next).
      const gone = await s.send({ path: `${dir}/gone` }, "zstd", "node-1:43");
      assert.equal(gone.outcome, "failed");
      assert.match(gone.reason, /No such file/);
    });
    assert.equal(received.length, 2);
    for (const r of received) assert.deepEqual(r, file);
    const open = [...Deno.readDirSync("/proc/self/fd")].filter((fd) => {
      try {
        return Deno.readLinkSync(`/proc/self/fd/${fd.name}`) === path;
      } catch {
        return false; // the directory's own descriptor, gone by now
      }
    });
    assert.equal(open.length, 0, "every attempt closed the batch file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a proxy named in the environment is used (through fetch), and NO_PROXY is honoured", async () => {
  // The agent's own client has no proxy support: with HTTP_PROXY set, batches go through fetch.
  // A subprocess, so that the environment of the other tests stays as it is.
  const BODY_BYTES = 3 * BODY_PIECE_BYTES + 1000; // several pieces, the last one short
  const proxied: string[] = [];
  const proxy = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (r) => {
    proxied.push(`${r.method} ${r.url} ${new Uint8Array(await r.arrayBuffer()).length}`);
    return new Response(null, { status: 202 });
  });
  try {
    await withCollector(async (r) => {
      await r.arrayBuffer();
      return new Response(null, { status: 200 });
    }, async (url) => {
      const send = async (env: Record<string, string>) => {
        const script = `
          import { Sender } from ${
          JSON.stringify(new URL("../lib/sender.ts", import.meta.url).href)
        };
          const logs = [];
          const sender = await Sender.create({ url: ${JSON.stringify(url)}, maxAttempts: 1,
            logger: (level, message) => logs.push(level + ": " + message) });
          // A spooled batch, as the shipper sends: read in pieces, streamed to fetch.
          const batch = Deno.makeTempFileSync();
          Deno.writeFileSync(batch, new Uint8Array(${BODY_BYTES}));
          const result = await sender.send({ path: batch }, "zstd", "node-1:9");
          Deno.removeSync(batch);
          console.log(JSON.stringify({ result, logs }));`;
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["eval", "--no-config", script],
          env: { HTTPS_PROXY: "", ALL_PROXY: "", NO_PROXY: "", ...env },
          stderr: "inherit",
        }).output();
        assert.ok(out.success);
        return JSON.parse(new TextDecoder().decode(out.stdout));
      };
      const viaProxy = await send({ HTTP_PROXY: `http://127.0.0.1:${proxy.addr.port}` });
      assert.deepEqual(viaProxy.result, { outcome: "delivered", status: 202, attempts: 1 });
      assert.deepEqual(viaProxy.logs, [
        `info: Collector ${
          new URL(url).host
        }: HTTP_PROXY is set, so batches go through fetch, which applies it (and NO_PROXY)`,
      ]);
      assert.deepEqual(proxied, [`POST ${url} ${BODY_BYTES}`]);
      const direct = await send({
        HTTP_PROXY: `http://127.0.0.1:${proxy.addr.port}`,
        NO_PROXY: "127.0.0.1",
      });
      assert.deepEqual(direct.result, { outcome: "delivered", status: 200, attempts: 1 });
      assert.equal(proxied.length, 1, "NO_PROXY: straight to the collector");
    });
  } finally {
    await proxy.shutdown();
  }
});
