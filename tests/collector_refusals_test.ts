/**
 * docs/collector.md's "Refusals, word for word" against the collector: a request for each
 * refusal, and every answer's text must be a row of the table, and every row an answer.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { batchBody, batchCbor, makeFlow, nsAt, postBatch, rawCbor } from "./_batches.ts";
import {
  type CollectorOptions,
  type RunningCollector,
  startCollector,
} from "../collector/server.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { until } from "./_until.ts";

/** One row of the table: the status and the text, `<…>` standing for what varies. */
interface Row {
  status: number;
  template: string;
  pattern: RegExp;
}

/** The table's rows that have a text (in backticks). */
async function documentedRefusals(): Promise<Row[]> {
  const doc = await Deno.readTextFile(new URL("../docs/collector.md", import.meta.url));
  const section = doc.slice(doc.indexOf("#### Refusals, word for word"));
  assert.ok(section.length > 0, "docs/collector.md has its refusals table");
  const table = section.split("\n\n").find((block) => block.startsWith("| Status"))!;
  const rows: Row[] = [];
  for (const line of table.split("\n").slice(2)) {
    const [, status, cell] = /^\|\s*(\d+)\s*\|(.*)\|$/.exec(line)!;
    const template = /`([^`]+)`/.exec(cell)?.[1];
    if (template === undefined) continue; // no text, e.g. Node's own 408
    const pattern = new RegExp(
      `^${
        template.split(/<[^>]+>/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
          .join(".+?")
      }$`,
    );
    rows.push({ status: Number(status), template, pattern });
  }
  return rows;
}

/**
 * Rows no request here can produce: the client that would read them has gone, the database
 * must fail, or the collector must listen beyond loopback (tests stay on loopback).
 */
const NOT_SENT = [
  "Cannot read the body: <reason>",
  // A cluster node's answer without ClickHouse (tests/cluster_test.ts runs the cluster).
  "No dependency map on this node: <path> needs the flows (start the cluster node with --clickhouse-url)",
  "Cannot handle request: <the error>",
  "Refusing to list flows without a token on an address beyond loopback (set --token-file, or --allow-unauthenticated to serve them to anyone)",
];

function flows(count: number): FlowRecord[] {
  return Array.from({ length: count }, (_, i) =>
    makeFlow({
      local: `10.0.0.1:${40_000 + i}`,
      remote: "10.0.0.2:5432",
      workload: "api",
      startS: 10 + i,
      endS: 11 + i,
    }));
}

/** A valid batch of two flows with its raw CBOR changed by `mutate`, gzipped. */
function tampered(mutate: (top: Map<number, unknown>, f: Map<number, unknown>[]) => void) {
  const top = rawCbor.decoder.decode(batchCbor("node-a", 1, flows(2))) as Map<number, unknown>;
  mutate(top, top.get(9) as Map<number, unknown>[]);
  return gzipSync(rawCbor.encoder.encode(top));
}

interface Refusal {
  status: number;
  text: string;
}

async function refusal(response: Response): Promise<Refusal> {
  const text = (await response.text()).trimEnd();
  assert.ok(response.status >= 400, `${response.status} ${text}`);
  return { status: response.status, text };
}

async function withCollector(
  options: Partial<CollectorOptions>,
  fn: (url: string, collector: RunningCollector) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "collector_refusals_test_" });
  const collector = await startCollector({
    dbPath: `${dir}/flows.db`,
    port: 0,
    logger: () => {},
    now: () => nsAt(60),
    ...options,
  });
  try {
    await fn(collector.url, collector);
  } finally {
    await collector.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Sends `head` and then `body` on a connection of its own; the raw answer, once it closes. */
async function rawRequest(url: string, head: string, body: Uint8Array): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
  await conn.write(new TextEncoder().encode(head));
  await conn.write(body);
  let answer = "";
  const buffer = new Uint8Array(4096);
  for (;;) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) break;
    answer += new TextDecoder().decode(buffer.subarray(0, n));
  }
  conn.close();
  return answer;
}

/** Every refusal the collector can be made to give here. */
async function sendEachRefusal(): Promise<Refusal[]> {
  const got: Refusal[] = [];
  const limits = {
    maxBatchRecords: 3,
    maxBodyBytes: 1024 * 1024,
    maxDecompressedBytes: 256 * 1024,
    bodyTimeoutSeconds: 1,
  };
  await withCollector(limits, async (url) => {
    const post = async (
      body: Uint8Array | ReadableStream<Uint8Array>,
      headers: Record<string, string> = {},
    ) => got.push(await refusal(await postBatch(url, body, headers)));
    const identity = { "content-encoding": "identity" };
    await post(Uint8Array.of(1, 2, 3, 4, 5)); // not gzip
    const truncated = new Uint8Array(25);
    truncated.set([0xa1, 0x09, 0x9a]);
    new DataView(truncated.buffer).setUint32(3, 107_600_000);
    await post(truncated, identity);
    await post(Uint8Array.of(0xa1, 0x09, 0xc0, 0x80), identity); // a tag
    await post(tampered((top) => top.set(0, 7)));
    await post(tampered((top) => top.delete(5)));
    await post(tampered((_, f) => f[0].set(4, 5)));
    await post(tampered((top) => (top.get(8) as Map<number, unknown>).set(0, (1n << 64n) - 1n)));
    await post(tampered((_, f) => f[1].set(3, nsAt(10))));
    await post(tampered((top) => top.set(5, nsAt(-1))));
    await post(tampered((_, f) => f[0].set(3, nsAt(60 + 86_401))));
    await post(tampered((_, f) => f[0].set(26, 1).set(12, 7).set(3, nsAt(9))));
    await post(tampered((_, f) => f[0].set(26, 1)));
    // An open flow whose next interim record counts fewer bytes than its last one.
    const open: FlowRecord = { ...flows(1)[0], recordKind: "interim", end: "open" };
    assert.equal((await (await postBatch(url, batchBody("node-a", 10, [open]))).json()).flows, 1);
    const later = { ...open, tEndNs: open.tEndNs + 1_000_000_000n, bytesSent: open.bytesSent - 1 };
    await post(batchBody("node-a", 11, [later]));
    await post(batchBody("node-a", 1, flows(2)), { "idempotency-key": "node-a:2" });
    for (
      const query of ["from=yesterday", "status=lost", "state=ajar", "limit=many", "ip=10.0.0"]
    ) {
      got.push(await refusal(await fetch(`${url}/v1/flows?${query}`)));
    }
    got.push(await refusal(await fetch(`${url}/v1/nothing`)));
    got.push(await refusal(await fetch(`${url}/v1/batches`)));
    const late = await rawRequest(
      url,
      "POST /v1/batches HTTP/1.1\r\nHost: c\r\nContent-Type: application/cbor\r\nContent-Length: 100\r\n\r\n",
      new Uint8Array(10),
    );
    const [head, body] = late.split("\r\n\r\n");
    got.push({
      status: Number(head.slice(9, 12)),
      text: (/transfer-encoding: chunked/i.test(head) ? body.split("\r\n")[1] : body).trimEnd(),
    });
    assert.equal(
      (await (await postBatch(url, batchBody("node-a", 7, flows(2)))).json()).status,
      "stored",
    );
    await post(batchBody("node-a", 7, flows(1)));
    await post(new Uint8Array(2 * 1024 * 1024));
    let sent = 0;
    await post(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent >= 2 * 1024 * 1024) return controller.close();
          sent += 256 * 1024;
          controller.enqueue(new Uint8Array(256 * 1024));
        },
      }),
    );
    await post(gzipSync(new Uint8Array(512 * 1024)));
    await post(new Uint8Array(300 * 1024), identity);
    await post(batchBody("node-a", 2, flows(4)));
    await post(batchBody("node-a", 3, flows(1)), { "content-type": "application/json" });
    await post(batchBody("node-a", 3, flows(1)), { "content-encoding": "br" });
  });
  await withCollector({ token: "secret" }, async (url) => {
    got.push(await refusal(await postBatch(url, batchBody("node-a", 1, flows(1)))));
    got.push(
      await refusal(
        await postBatch(url, batchBody("node-a", 1, flows(1)), { authorization: "Bearer guess" }),
      ),
    );
  });
  await withCollector({ maxConcurrentIngests: 1 }, async (url, collector) => {
    // 12 MiB that do not compress keep the one ingest slot busy while they are inflated.
    const noise = new Uint8Array(12 * 1024 * 1024);
    for (let i = 0; i < noise.length; i += 65536) {
      crypto.getRandomValues(noise.subarray(i, i + 65536));
    }
    const slow = postBatch(url, gzipSync(noise, { level: 1 }));
    await until(() => collector.stats().ingesting === 1, "the first batch's ingest");
    got.push(await refusal(await postBatch(url, batchBody("node-a", 1, flows(1)))));
    await (await slow).text();
  });
  await withCollector(
    { maxPendingBodyBytes: 64 * 1024, bodyTimeoutSeconds: 1 },
    async (url, collector) => {
      const hog = rawRequest(
        url,
        "POST /v1/batches HTTP/1.1\r\nHost: c\r\nContent-Type: application/cbor\r\nContent-Length: 65536\r\n\r\n",
        new Uint8Array(65_500),
      );
      await until(() => collector.stats().pendingBodyBytes === 65_500, "the hog's bytes");
      got.push(await refusal(await postBatch(url, batchBody("node-a", 1, flows(1)))));
      await hog; // cut off at the body timeout
    },
  );
  return got;
}

Deno.test("each refusal says what docs/collector.md says, and the table lists no other", async () => {
  const rows = await documentedRefusals();
  const refusals = await sendEachRefusal();
  for (const { status, text } of refusals) {
    assert.equal(text.split("\n").length, 1, `one line: ${text}`);
    assert.ok(
      rows.some((row) => row.status === status && row.pattern.test(text)),
      `docs/collector.md does not list ${status} ${JSON.stringify(text)}`,
    );
  }
  for (const row of rows) {
    if (NOT_SENT.includes(row.template)) continue;
    assert.ok(
      refusals.some(({ status, text }) => row.status === status && row.pattern.test(text)),
      `no request here is refused with ${row.status} ${JSON.stringify(row.template)}`,
    );
  }
});
