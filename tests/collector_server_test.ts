import assert from "node:assert/strict";
import { certificateAndKeyPem } from "./_certs.ts";
import { gzipSync } from "node:zlib";
import { DatabaseSync } from "node:sqlite";
import { batchBody, batchCbor, batchCborV2, makeFlow, nsAt, postBatch } from "./_batches.ts";
import {
  type CollectorOptions,
  type RunningCollector,
  startCollector,
} from "../collector/server.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { Sender } from "../lib/sender.ts";
import { formatFlowId } from "../lib/flow_id.ts";

const TOKEN = "s3cret-token";

interface Fixture {
  dir: string;
  collector: RunningCollector;
  /** POSTs a body to /v1/batches with the usual headers, overridable. */
  post(
    body: Uint8Array | ReadableStream<Uint8Array>,
    headers?: Record<string, string>,
  ): Promise<Response>;
  /** GETs /v1/flows with query parameters; returns the parsed array. */
  flows(params?: Record<string, string>): Promise<Record<string, unknown>[]>;
}

async function withCollector(
  options: Partial<CollectorOptions>,
  body: (f: Fixture) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "collector_test_" });
  const collector = await startCollector({
    dbPath: `${dir}/flows.db`,
    port: 0,
    logger: () => {},
    now: () => nsAt(60), // the flows' times are fixed in the past
    ...options,
  });
  const auth: Record<string, string> = options.token ? { authorization: `Bearer ${TOKEN}` } : {};
  const fixture: Fixture = {
    dir,
    collector,
    post: (payload, headers = {}) => postBatch(collector.url, payload, { ...auth, ...headers }),
    flows: async (params = {}) => {
      const response = await fetch(
        `${collector.url}/v1/flows?${new URLSearchParams(params)}`,
        { headers: auth },
      );
      assert.equal(response.status, 200, await response.clone().text());
      // ns times exceed 2^53: keep them exact as text
      const text = (await response.text()).replace(/"(t_start_ns|t_end_ns)":(\d+)/g, '"$1":"$2"');
      return JSON.parse(text);
    },
  };
  try {
    await body(fixture);
  } finally {
    await collector.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function expectStatus(response: Response, status: number, message?: RegExp): Promise<void> {
  const text = await response.text();
  assert.equal(response.status, status, text);
  if (message) {
    assert.match(text, message);
    assert.equal(text.trimEnd().split("\n").length, 1, "the message is one line");
  }
}

// Two hosts that talk to each other: api on node-a (10.0.0.1) calls db on node-b (10.0.0.2).
function nodeAFlows(): FlowRecord[] {
  return [
    makeFlow({
      local: "10.0.0.1:40000",
      remote: "10.0.0.2:5432",
      workload: "api",
      startS: 10,
      endS: 12,
    }),
    makeFlow({
      local: "10.0.0.1:8080",
      remote: "10.0.0.2:51000",
      workload: "api",
      startS: 20,
      endS: 21,
      direction: "inbound",
    }),
  ];
}
function nodeBFlows(): FlowRecord[] {
  return [
    makeFlow({
      local: "10.0.0.2:5432",
      remote: "10.0.0.1:40000",
      workload: "db",
      startS: 10,
      endS: 12,
      direction: "inbound",
    }),
    makeFlow({
      local: "10.0.0.2:51000",
      remote: "10.0.0.1:8080",
      workload: "db",
      startS: 20,
      endS: 21,
    }),
  ];
}

Deno.test("collector stores two hosts' batches and attributes each side to the other", async () => {
  await withCollector({}, async ({ post, flows }) => {
    const first = await post(batchBody("node-a", 1, nodeAFlows()), {
      "idempotency-key": "node-a:1",
    });
    assert.equal(first.status, 200);
    // node-b's heartbeats have not arrived: node-a's flows are held.
    assert.deepEqual(await first.json(), {
      status: "stored",
      host: "node-a",
      sequence: 1,
      flows: 2,
      repeated_flows: 0,
      updated_flows: 0,
      attributed: 0,
      pending: 2,
      unattributed: 0,
      settled: 0,
    });
    const second = await post(batchBody("node-b", 1, nodeBFlows()));
    const result = await second.json();
    assert.equal(result.attributed, 2, "node-a's heartbeats were known");
    assert.equal(result.settled, 2, "node-a's held flows were settled");
    const stored = await flows();
    assert.deepEqual(
      stored.map((f) => [f.host, f.local_workload_id, f.remote_workload_id, f.attribution]),
      [
        ["node-a", "api", "db", "attributed"],
        ["node-b", "db", "api", "attributed"],
        ["node-a", "api", "db", "attributed"],
        ["node-b", "db", "api", "attributed"],
      ],
    );
    assert.equal(stored[0].t_start_ns, String(nsAt(10)));
    assert.equal(stored[0].remote_ip, "10.0.0.2");
  });
});

Deno.test("collector stores a repeated batch once", async () => {
  await withCollector({}, async ({ post, collector }) => {
    const body = batchBody("node-a", 7, nodeAFlows());
    assert.equal((await (await post(body)).json()).status, "stored");
    const again = await post(body);
    assert.equal(again.status, 200);
    assert.equal((await again.json()).status, "duplicate");
    assert.deepEqual(collector.store.counts(), {
      batches: 1,
      flows: 2,
      pending: 2,
      revocations: 0,
    });
  });
});

Deno.test("collector stores a flow sent again in another batch once", async () => {
  await withCollector({}, async ({ post, flows, collector }) => {
    const [first, second] = nodeAFlows();
    await post(batchBody("node-a", 1, [first]));
    // The agent sends the flow again under a new sequence number (e.g. it restarted before
    // it knew the first batch was delivered).
    const again = await post(batchBody("node-a", 2, [first, second]));
    assert.deepEqual(await again.json(), {
      status: "stored",
      host: "node-a",
      sequence: 2,
      flows: 2,
      repeated_flows: 1,
      updated_flows: 0,
      attributed: 0,
      pending: 1,
      unattributed: 0,
      settled: 0,
    });
    assert.deepEqual(collector.store.counts(), {
      batches: 2,
      flows: 2,
      pending: 2,
      revocations: 0,
    });
    assert.equal(collector.ingestor.attributor.heldCount, 2, "the repeat is not held again");
    const stored = await flows();
    assert.deepEqual(stored.map((f) => [f.batch_sequence, f.flow_id, f.bytes_retrans]), [
      [1, formatFlowId(first.bootId, first.cookie), 0],
      [2, formatFlowId(second.bootId, second.cookie), 0],
    ]);
  });
});

Deno.test("collector stores flows of version 2 batches, which have no flow ID, as NULL", async () => {
  await withCollector({}, async ({ post, flows, dir }) => {
    const old = nodeAFlows();
    for (const sequence of [1, 2]) {
      const answer = await post(gzipSync(batchCborV2("node-a", sequence, old)));
      assert.equal((await answer.json()).repeated_flows, 0, "without a flow ID, never a repeat");
    }
    const stored = await flows();
    assert.equal(stored.length, 4);
    assert.ok(stored.every((f) => f.flow_id === null && f.bytes_retrans === null));
    using db = new DatabaseSync(`${dir}/flows.db`, { readOnly: true });
    assert.deepEqual(
      {
        ...db.prepare("SELECT count(flow_id) AS ids, count(bytes_retrans) AS retrans FROM flows")
          .get(),
      },
      { ids: 0, retrans: 0 },
      "NULL, not a made-up value",
    );
  });
});

Deno.test("collector refuses bad batches with one-line messages and keeps serving", async (t) => {
  await withCollector(
    { token: TOKEN, maxBodyBytes: 64 * 1024, maxDecompressedBytes: 256 * 1024 },
    async ({ post, collector }) => {
      const cbor = batchCbor("node-a", 1, nodeAFlows());

      await t.step("truncated CBOR: 400", async () => {
        await expectStatus(
          await post(gzipSync(cbor.subarray(0, cbor.length - 9))),
          400,
          /truncated CBOR/,
        );
      });
      await t.step("wrong schema version: 400", async () => {
        const wrong = cbor.slice();
        assert.equal(wrong[1], 0x00); // key 0, schema_version
        wrong[2] = 0x07;
        await expectStatus(await post(gzipSync(wrong)), 400, /Unsupported schema version 7/);
      });
      await t.step("schema violation: 400", async () => {
        await expectStatus(
          await post(gzipSync(Uint8Array.of(0xa0))),
          400,
          /missing schema_version|schema_version/,
        );
      });
      await t.step("corrupt gzip: 400", async () => {
        await expectStatus(
          await post(Uint8Array.of(0x1f, 0x8b, 8, 0, 1, 2, 3)),
          400,
          /Cannot decompress gzip body/,
        );
      });
      await t.step("mismatched Idempotency-Key: 400", async () => {
        await expectStatus(
          await post(gzipSync(cbor), { "idempotency-key": "node-a:2" }),
          400,
          /does not match the batch \(node-a:1\)/,
        );
      });
      await t.step("huge body with Content-Length: 413", async () => {
        await expectStatus(
          await post(new Uint8Array(1024 * 1024)),
          413,
          /exceeds the 65536-byte limit/,
        );
      });
      await t.step("huge streamed body without Content-Length: 413", async () => {
        let sent = 0;
        const stream = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent >= 1024 * 1024) return controller.close();
            sent += 16 * 1024;
            controller.enqueue(new Uint8Array(16 * 1024));
          },
        });
        await expectStatus(await post(stream), 413, /more than 65536 bytes/);
      });
      await t.step("gzip bomb: 413", async () => {
        const bomb = gzipSync(new Uint8Array(8 * 1024 * 1024)); // ~8 KiB that inflates to 8 MiB
        assert.ok(bomb.length < 64 * 1024);
        await expectStatus(
          await post(bomb),
          413,
          /Decompressed body exceeds the 262144-byte limit/,
        );
      });
      await t.step("wrong content type: 415", async () => {
        await expectStatus(
          await post(gzipSync(cbor), { "content-type": "application/json" }),
          415,
          /Unsupported Content-Type "application\/json"/,
        );
      });
      await t.step("unknown content coding: 415", async () => {
        await expectStatus(
          await post(gzipSync(cbor), { "content-encoding": "br" }),
          415,
          /Content-Encoding "br"/,
        );
      });
      await t.step("missing token: 401", async () => {
        const response = await fetch(`${collector.url}/v1/batches`, {
          method: "POST",
          body: gzipSync(cbor),
          headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
        });
        assert.equal(response.headers.get("www-authenticate"), 'Bearer realm="flowexporter"');
        await expectStatus(response, 401, /Missing bearer token/);
      });
      await t.step("wrong token: 401", async () => {
        await expectStatus(
          await post(gzipSync(cbor), { authorization: "Bearer nope" }),
          401,
          /Wrong bearer token/,
        );
      });
      await t.step("queries need the token too", async () => {
        await expectStatus(await fetch(`${collector.url}/v1/flows`), 401);
      });
      await t.step("a valid batch is still accepted, gzip or identity", async () => {
        await expectStatus(await post(gzipSync(cbor)), 200);
        await expectStatus(
          await post(batchCbor("node-b", 1, nodeBFlows()), { "content-encoding": "identity" }),
          200,
        );
        assert.equal(collector.store.counts().flows, 4);
      });
      await t.step("wrong method and path answer 405 and 404", async () => {
        const auth = { authorization: `Bearer ${TOKEN}` };
        await expectStatus(await fetch(`${collector.url}/v1/batches`, { headers: auth }), 405);
        await expectStatus(await fetch(`${collector.url}/nope`, { headers: auth }), 404);
      });
    },
  );
});

Deno.test("collector reads the token from a file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/token`, `${TOKEN}\n`);
    await using collector = await startCollector({
      dbPath: `${dir}/flows.db`,
      port: 0,
      tokenFile: `${dir}/token`,
      logger: () => {},
    });
    const response = await fetch(`${collector.url}/v1/flows`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    await expectStatus(response, 200);
    await assert.rejects(
      startCollector({ dbPath: `${dir}/x.db`, port: 0, tokenFile: `${dir}/missing` }),
      /Cannot read token file .*missing/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("collector gives up on held flows after the hold delay and keeps them across a restart", async (t) => {
  const dir = await Deno.makeTempDir();
  let nowNs = nsAt(100);
  const options = {
    dbPath: `${dir}/flows.db`,
    port: 0,
    logger: () => {},
    now: () => nowNs,
    tickMs: 10,
  };
  try {
    await t.step("a flow without owner is stored pending", async () => {
      await using collector = await startCollector(options);
      const response = await fetch(`${collector.url}/v1/batches`, {
        method: "POST",
        body: batchBody("node-a", 1, nodeAFlows()) as BodyInit,
        headers: { "content-type": "application/cbor", "content-encoding": "gzip" },
      });
      assert.equal((await response.json()).pending, 2);
    });
    await t.step("after a restart, the owner's batch settles the held flows", async () => {
      await using collector = await startCollector(options);
      assert.equal(collector.ingestor.attributor.heldCount, 2);
      const flowsB = nodeBFlows().slice(0, 1); // only the heartbeat that covers the first flow
      collector.ingestor.ingestBody(batchCbor("node-b", 1, flowsB));
      assert.deepEqual(
        collector.store.flows({ hostname: "node-a" }).map((
          f,
        ) => [f.remoteWorkloadId, f.attribution]),
        [["db", "attributed"], [null, "pending"]],
      );
    });
    await t.step("past the hold delay the rest is stored unattributed", async () => {
      await using collector = await startCollector({ ...options, holdSeconds: 60 });
      nowNs += 61n * 1_000_000_000n;
      collector.ingestor.tick();
      assert.deepEqual(
        collector.store.flows({ hostname: "node-a" }).map((f) => f.attribution),
        ["attributed", "unattributed"],
      );
      assert.equal(collector.ingestor.attributor.heldCount, 0);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("collector withdraws an attribution when a later heartbeat contests the address", async () => {
  await withCollector({}, async ({ post, flows }) => {
    await post(batchBody("node-b", 1, nodeBFlows()));
    await post(batchBody("node-a", 1, nodeAFlows()));
    assert.equal((await flows({ host: "node-a" }))[0].remote_workload_id, "db");
    // node-c claims 10.0.0.2 over the same time (a stale address table, a clock gone wrong):
    // nobody can say which one node-a talked to.
    await post(batchBody("node-c", 1, [
      makeFlow({
        local: "10.0.0.2:7000",
        remote: "10.0.0.9:1",
        workload: "intruder",
        startS: 5,
        endS: 15,
      }),
    ]));
    const after = await flows({ host: "node-a" });
    assert.deepEqual(after.map((f) => [f.t_start_ns, f.remote_workload_id, f.attribution]), [
      [String(nsAt(10)), null, "ambiguous"], // inside node-c's claim (5 s to 15 s, plus slack)
      [String(nsAt(20)), "db", "attributed"], // outside it: only node-b claims the address
    ]);
  });
});

Deno.test("GET /v1/flows filters by time, workload, address, host and status", async () => {
  await withCollector({}, async ({ post, flows, collector }) => {
    await post(batchBody("node-a", 1, nodeAFlows()));
    await post(batchBody("node-b", 1, nodeBFlows()));
    await post(batchBody("node-c", 1, [
      makeFlow({
        local: "10.0.0.3:1234",
        remote: "192.0.2.1:443",
        workload: "crawler",
        startS: 30,
        endS: 31,
      }),
    ]));
    const ids = async (params: Record<string, string>) =>
      (await flows(params)).map((f) => `${f.host}:${f.local_port}`);
    assert.deepEqual(await ids({ from: String(nsAt(15)), to: String(nsAt(25)) }), [
      "node-a:8080",
      "node-b:51000",
    ]);
    assert.deepEqual(await ids({ from: "2026-01-01T00:00:25Z" }), ["node-c:1234"]);
    assert.deepEqual(await ids({ workload: "db", to: String(nsAt(15)) }), [
      "node-a:40000",
      "node-b:5432",
    ]);
    assert.deepEqual(await ids({ ip: "192.0.2.1" }), ["node-c:1234"]);
    assert.deepEqual(await ids({ host: "node-b", limit: "1" }), ["node-b:5432"]);
    assert.deepEqual(await ids({ status: "pending" }), ["node-c:1234"]);
    await expectStatus(
      await fetch(`${collector.url}/v1/flows?status=maybe`),
      400,
      /Invalid status "maybe": use one of attributed, pending, unattributed, ambiguous/,
    );
    await expectStatus(
      await fetch(`${collector.url}/v1/flows?from=yesterday`),
      400,
      /Invalid from time/,
    );
  });
});

Deno.test("collector serves HTTPS with --tls-cert and --tls-key, and an exporter's Sender delivers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "collector_test_" });
  try {
    // One self-signed leaf for 127.0.0.1, which the client trusts as its CA.
    const { cert, key } = await certificateAndKeyPem({ cn: "127.0.0.1", ips: ["127.0.0.1"] });
    await Deno.writeTextFile(`${dir}/cert.pem`, cert);
    await Deno.writeTextFile(`${dir}/key.pem`, key);
    await using collector = await startCollector({
      dbPath: `${dir}/flows.db`,
      port: 0,
      tlsCertFile: `${dir}/cert.pem`,
      tlsKeyFile: `${dir}/key.pem`,
      logger: () => {},
      now: () => nsAt(60),
    });
    assert.match(collector.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    using sender = await Sender.create({
      url: `${collector.url}/v1/batches`,
      caFile: `${dir}/cert.pem`,
      maxAttempts: 1,
    });
    const result = await sender.send(batchBody("node-a", 1, nodeAFlows()), "gzip", "node-a:1");
    assert.equal(result.outcome, "delivered", JSON.stringify(result));
    assert.equal(collector.store.counts().flows, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
