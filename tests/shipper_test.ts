import assert from "node:assert/strict";
import { codingOfContentEncoding } from "../lib/body_coding.ts";
import { compressFrame, decompress } from "../lib/compression.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";
import { Shipper, type ShipperOptions } from "../lib/shipper.ts";
import { Spool } from "../lib/spool.ts";
import { CAN_MOUNT_TMPFS, fillUp, withTinyFs } from "./_tiny_fs.ts";
import { decodeBatch, type DecodedBatch, MAX_BATCH_BYTES } from "../lib/wire.ts";
import { startCollector } from "../collector/server.ts";
import { until } from "./_until.ts";

/**
 * A collector on 127.0.0.1 that decodes and keeps every batch it accepts; with `gzipOnly`, it
 * answers 415 to other codings, as collectors before zstd support do.
 */
function collector(options: { port?: number; status?: () => number; gzipOnly?: boolean } = {}) {
  const batches: DecodedBatch[] = [];
  const keys: string[] = [];
  const encodings: string[] = [];
  let requests = 0;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
    async (request) => {
      requests++;
      const encoding = request.headers.get("content-encoding") ?? "";
      encodings.push(encoding);
      const coding = codingOfContentEncoding(encoding);
      const status = options.gzipOnly && coding !== "gzip" ? 415 : options.status?.() ?? 200;
      const raw = new Uint8Array(await request.arrayBuffer());
      if (status === 200) {
        batches.push(decodeBatch(await decompress(raw, coding!, MAX_BATCH_BYTES)));
        keys.push(request.headers.get("idempotency-key") ?? "");
      }
      return new Response(status === 200 ? null : "refused", { status });
    },
  );
  return {
    server,
    url: `http://127.0.0.1:${server.addr.port}/v1/batches`,
    batches,
    keys,
    encodings,
    requests: () => requests,
    /** How many times each flow (by its end time) arrived. */
    counts() {
      const counts = new Map<bigint, number>();
      for (const b of batches) {
        for (const f of b.flows) counts.set(f.tEndNs, (counts.get(f.tEndNs) ?? 0) + 1);
      }
      return counts;
    },
  };
}

/** A loopback URL where nothing listens (yet). */
function unusedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

async function withSpoolDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "shipper_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The tests' wall clock: the middle of the minute they started in, standing still. Windows are
 * wall-clock minutes, so on the real clock a test that ran across a minute's end got one batch
 * more than it counts; here only the caps and close() end a window.
 */
const TEST_NOW_MS = Math.floor(Date.now() / 60_000) * 60_000 + 30_000;

function options(
  spoolDir: string,
  extra: Partial<ShipperOptions> = {},
  logs: string[] = [],
): ShipperOptions {
  return {
    spoolDir,
    now: () => TEST_NOW_MS,
    exporterVersion: "0.1.0-test",
    host: () => ({ hostname: "node-1", workloadId: "k8s://kube-system/agent" }),
    clockOffsetNs: () => 1_767_000_000_000_000_000n,
    lossCounters: () => ({ kernelDrops: 0n, recursionMisses: 0n }),
    compressFrame,
    baseDelayMs: 5,
    maxDelayMs: 50,
    maxAttempts: 2,
    logger: (level, message) => logs.push(`${level}: ${message}`),
    ...extra,
  };
}

/** The batches in a spool directory, oldest first. */
async function spooled(dir: string): Promise<DecodedBatch[]> {
  const spool = await Spool.open({ dir });
  const out: DecodedBatch[] = [];
  for (const entry of spool.pending()) {
    out.push(
      decodeBatch(await decompress(await Deno.readFile(entry.path), entry.coding, MAX_BATCH_BYTES)),
    );
  }
  return out;
}

Deno.test("with the collector down then up, every flow is delivered exactly once", async () => {
  await withSpoolDir(async (dir) => {
    const port = unusedPort();
    const shipper = new Shipper(options(dir, {
      collectorUrl: `http://127.0.0.1:${port}/v1/batches`,
      maxRecords: 50,
    }));
    await shipper.start();
    let up: ReturnType<typeof collector> | undefined;
    try {
      for (let i = 0; i < 500; i++) shipper.add(syntheticFlow(i));
      await until(() => shipper.stats().batchesSpooled === 10, "ten batches spooled");
      await until(() => shipper.stats().batchesFailed >= 2, "failed deliveries");
      assert.equal(shipper.stats().batchesSent, 0);
      assert.equal(shipper.stats().spoolFiles, 10);
      up = collector({ port });
      await until(() => shipper.stats().spoolFiles === 0, "the spool to drain");
      const stats = await shipper.close(2000);
      const counts = up.counts();
      assert.equal(counts.size, 500);
      assert.ok([...counts.values()].every((n) => n === 1), "no flow arrived twice");
      assert.equal(stats.recordsSent, 500);
      assert.equal(stats.batchesSent, 11, "ten full batches and the shutdown batch");
      assert.ok(stats.batchesRetried >= 2);
      const sequences = up.keys.map((k) => Number(k.split(":")[1]));
      assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
      assert.equal(new Set(sequences).size, sequences.length);
      assert.ok(up.keys.every((k) => k.startsWith("node-1:")));
    } finally {
      await shipper.close(0);
      await up?.server.shutdown();
    }
  });
});

Deno.test("after a restart the batches left in the spool go first, in order", async () => {
  await withSpoolDir(async (dir) => {
    const offline = new Shipper(options(dir, { maxRecords: 50 }));
    await offline.start();
    for (let i = 0; i < 120; i++) offline.add(syntheticFlow(i));
    assert.equal((await offline.close(0)).spoolFiles, 3);
    const up = collector();
    try {
      const online = new Shipper(options(dir, { collectorUrl: up.url, maxRecords: 50 }));
      await online.start();
      for (let i = 120; i < 150; i++) online.add(syntheticFlow(i));
      await online.close(2000);
      const sequences = up.batches.map((b) => b.header.sequence);
      assert.deepEqual(sequences, Array.from({ length: 4 }, (_, i) => sequences[0] + i));
      assert.deepEqual(up.batches.map((b) => b.header.recordCount), [50, 50, 20, 30]);
      assert.deepEqual(
        up.batches.flatMap((b) => b.flows),
        Array.from({ length: 150 }, (_, i) => syntheticFlow(i)),
      );
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("close() flushes the open window within its deadline, once", async () => {
  await withSpoolDir(async (dir) => {
    const up = collector();
    try {
      const shipper = new Shipper(options(dir, { collectorUrl: up.url }));
      await shipper.start();
      for (let i = 0; i < 10; i++) shipper.add(syntheticFlow(i));
      const started = performance.now();
      const closing = shipper.close(2000);
      assert.equal(shipper.close(5), closing, "a second close() is the first one");
      const stats = await closing;
      assert.ok(performance.now() - started < 1000);
      assert.equal(up.counts().size, 10);
      assert.equal(up.batches[0].header.host.workloadId, "k8s://kube-system/agent");
      assert.equal(stats.spoolFiles, 0);
      assert.throws(
        () => shipper.add(syntheticFlow(11)),
        /^Error: Cannot add a flow: the shipper is closed$/,
      );
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("close() keeps the batch when the collector is down", async () => {
  await withSpoolDir(async (dir) => {
    const logs: string[] = [];
    const shipper = new Shipper(options(dir, {
      collectorUrl: `http://127.0.0.1:${unusedPort()}/`,
      maxDelayMs: 5000,
    }, logs));
    await shipper.start();
    for (let i = 0; i < 5; i++) shipper.add(syntheticFlow(i));
    const stats = await shipper.close(300);
    assert.equal(stats.spoolFiles, 1);
    assert.ok(logs.includes("warn: Shutdown: 1 batches stay in the spool for the next start"));
    assert.deepEqual(
      (await spooled(dir))[0].flows,
      Array.from({ length: 5 }, (_, i) => syntheticFlow(i)),
    );
  });
});

Deno.test("close() gives up at its deadline on a collector that never answers", async () => {
  await withSpoolDir(async (dir) => {
    // Accepts connections and never answers: only the deadline ends the last round.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    (async () => {
      for await (const conn of listener) held.push(conn);
    })();
    try {
      const port = (listener.addr as Deno.NetAddr).port;
      const shipper = new Shipper(options(dir, { collectorUrl: `http://127.0.0.1:${port}/` }));
      await shipper.start();
      for (let i = 0; i < 5; i++) shipper.add(syntheticFlow(i));
      const started = performance.now();
      const stats = await shipper.close(300);
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 2000, `close() took ${elapsed} ms`);
      assert.equal(stats.spoolFiles, 1);
    } finally {
      listener.close();
      for (const conn of held) conn.close();
    }
  });
});

Deno.test("without a collector the spool stays under its cap and reports evictions", async () => {
  await withSpoolDir(async (dir) => {
    const shipper = new Shipper(options(dir, { maxRecords: 20, spoolMaxBytes: 4000 }));
    await shipper.start();
    // The eviction count after each batch was spooled: a batch reports the evictions that the
    // batch before it caused (its own header was written before it was spooled).
    const evictionsAfter: number[] = [];
    for (let batch = 0; batch < 10; batch++) {
      for (let i = 0; i < 20; i++) shipper.add(syntheticFlow(batch * 20 + i));
      await until(() => shipper.stats().batchesSpooled === batch + 1, `batch ${batch}`);
      evictionsAfter.push(shipper.stats().spoolEvictions);
    }
    const stats = await shipper.close(0);
    assert.ok(stats.spoolBytes <= 4000, `${stats.spoolBytes} bytes spooled`);
    assert.ok(stats.spoolEvictions > 0);
    assert.equal(stats.batchesSpooled, 11, "10 full batches and the shutdown batch");
    assert.equal(stats.spoolFiles + stats.spoolEvictions, 11);
    const left = await spooled(dir);
    assert.equal(left.length, stats.spoolFiles);
    const first = left[0].header.sequence - stats.spoolEvictions;
    for (const { header } of left) {
      const index = header.sequence - first;
      const expected = (evictionsAfter[index - 1] ?? 0) - (evictionsAfter[index - 2] ?? 0);
      assert.equal(header.loss.spoolEvictions, expected, `evictions reported by batch ${index}`);
    }
    assert.ok(left.some((b) => b.header.loss.spoolEvictions > 0));
  });
});

Deno.test("each batch reports the loss counters' increase since the previous batch", async () => {
  await withSpoolDir(async (dir) => {
    const counters = { kernelDrops: 5n, recursionMisses: 2n };
    const shipper = new Shipper(
      options(dir, { maxRecords: 1, lossCounters: () => ({ ...counters }) }),
    );
    await shipper.start();
    const step = async (i: number, kernelDrops: bigint, recursionMisses: bigint) => {
      Object.assign(counters, { kernelDrops, recursionMisses });
      shipper.add(syntheticFlow(i));
      await until(() => shipper.stats().batchesSpooled === i + 1, `batch ${i}`);
    };
    await step(0, 5n, 2n);
    await step(1, 12n, 2n);
    await step(2, 3n, 1n); // the counters were reset (program reloaded)
    await shipper.close(0);
    const loss = (await spooled(dir)).map((b) => b.header.loss);
    assert.deepEqual(loss.slice(0, 3), [
      { kernelDrops: 5n, recursionMisses: 2n, spoolEvictions: 0 },
      { kernelDrops: 7n, recursionMisses: 0n, spoolEvictions: 0 },
      { kernelDrops: 3n, recursionMisses: 1n, spoolEvictions: 0 },
    ]);
  });
});

Deno.test("kernel drops counted elsewhere go into the next batch, and not into what is reported back", async () => {
  await withSpoolDir(async (dir) => {
    const counters = { kernelDrops: 5n, recursionMisses: 0n };
    const reportedBack: bigint[] = [];
    const shipper = new Shipper(
      options(dir, {
        maxRecords: 1,
        lossCounters: () => ({ ...counters }),
        lossReported: { kernelDrops: 5n, recursionMisses: 0n },
        onSpooled: (_window, reported) => reportedBack.push(reported.kernelDrops),
      }),
    );
    await shipper.start();
    // A retired capture's ring had dropped 4 that no batch reported.
    shipper.addUnreportedKernelDrops(4n);
    const step = async (i: number, kernelDrops: bigint) => {
      counters.kernelDrops = kernelDrops;
      shipper.add(syntheticFlow(i));
      await until(() => shipper.stats().batchesSpooled === i + 1, `batch ${i}`);
    };
    await step(0, 6n);
    await step(1, 8n);
    await shipper.close(0);
    const loss = (await spooled(dir)).map((b) => b.header.loss.kernelDrops);
    assert.deepEqual(loss.slice(0, 2), [5n, 2n], "1 of this capture and 4 retired, then 2");
    assert.deepEqual(reportedBack.slice(0, 2), [6n, 8n], "this capture's own counts");
  });
});

Deno.test("the shipper goes quiet after a window closed on its interval: spooled, and with a collector, sent", async () => {
  // The agent gives the C heap's free memory back then, so when it is said decides what a quiet
  // agent keeps, and what a busy one pays for.
  const run = async (dir: string, collectorUrl: string | undefined, sent: () => number) => {
    let now = TEST_NOW_MS;
    const events: string[] = [];
    const shipper = new Shipper(options(dir, {
      now: () => now,
      collectorUrl,
      maxRecords: 2,
      onSpooled: (window) => events.push(`spooled ${window}`),
      onQuiet: () => events.push(`quiet, ${sent()} sent`),
    }));
    await shipper.start();
    for (let i = 0; i < 4; i++) shipper.add(syntheticFlow(i)); // two windows full
    await until(() => shipper.stats().batchesSpooled === 2, "the full windows spooled");
    shipper.add(syntheticFlow(4));
    now += 60_000; // past the window's end: the next flow closes it on its interval
    shipper.add(syntheticFlow(5));
    await until(() => events.includes("spooled 2") && events.at(-1)!.startsWith("quiet"), "quiet");
    await new Promise((resolve) => setTimeout(resolve, 100)); // nothing more comes
    await shipper.close(2000);
    return events;
  };
  await withSpoolDir(async (dir) => {
    assert.deepEqual(await run(dir, undefined, () => 0), [
      "spooled 0",
      "spooled 1",
      "spooled 2",
      "quiet, 0 sent",
      "spooled 3", // the last flow, flushed at close: not a window closed on its interval
    ]);
  });
  await withSpoolDir(async (dir) => {
    const up = collector();
    try {
      const events = await run(dir, up.url, () => up.batches.length);
      assert.deepEqual(events.filter((e) => e.startsWith("quiet")), ["quiet, 3 sent"]);
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("a batch the collector refuses is set aside, not retried", async () => {
  await withSpoolDir(async (dir) => {
    const logs: string[] = [];
    const up = collector({ status: () => 400 });
    try {
      const shipper = new Shipper(options(dir, { collectorUrl: up.url, maxRecords: 10 }, logs));
      await shipper.start();
      for (let i = 0; i < 10; i++) shipper.add(syntheticFlow(i));
      const stats = await shipper.close(2000);
      assert.equal(stats.batchesRejected, 2, "the full batch and the shutdown batch");
      assert.equal(up.requests(), 2);
      assert.equal(stats.spoolFiles, 0);
      assert.equal((await Array.fromAsync(Deno.readDir(`${dir}/rejected`))).length, 2);
      assert.ok(
        logs.some((l) =>
          /^error: Collector .* refused batch node-1:\d+ for good \(HTTP 400: refused\)/.test(l)
        ),
      );
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("a collector that answers 415 to zstd gets gzip: the refused batch and every later one", async () => {
  await withSpoolDir(async (dir) => {
    const logs: string[] = [];
    const up = collector({ gzipOnly: true });
    try {
      const shipper = new Shipper(options(dir, { collectorUrl: up.url, maxRecords: 5 }, logs));
      await shipper.start();
      for (let i = 0; i < 10; i++) shipper.add(syntheticFlow(i));
      await until(() => up.batches.length === 2, "two batches delivered");
      for (let i = 10; i < 15; i++) shipper.add(syntheticFlow(i));
      const stats = await shipper.close(2000);
      assert.equal(stats.batchesRejected, 0);
      assert.equal(stats.spoolFiles, 0);
      assert.deepEqual([...up.counts().values()], Array(15).fill(1), "every flow, once");
      assert.equal(up.encodings[0], "zstd", "zstd first");
      assert.ok(up.encodings.slice(1).every((e) => e === "gzip"), up.encodings.join(","));
      assert.equal(
        logs.filter((l) => l.includes("does not accept zstd bodies (HTTP 415): sending gzip"))
          .length,
        1,
        logs.join("\n"),
      );
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("a 409 is set aside with what to check: a reused sequence number", async () => {
  await withSpoolDir(async (dir) => {
    const logs: string[] = [];
    const up = collector({ status: () => 409 });
    try {
      const shipper = new Shipper(options(dir, { collectorUrl: up.url, maxRecords: 5 }, logs));
      await shipper.start();
      for (let i = 0; i < 5; i++) shipper.add(syntheticFlow(i));
      const stats = await shipper.close(2000);
      assert.equal(stats.batchesRejected, 2);
      assert.ok(
        logs.some((l) =>
          /^error: Collector .* refused batch node-1:\d+ for good \(HTTP 409: refused\): kept in .*rejected.*, not retried \(the collector holds other content under this sequence number: check that no other host shares this hostname and that the spool was not restored from a copy\)$/
            .test(l)
        ),
        logs.join("\n"),
      );
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("a collector that finds a batch in its future (400) gets it set aside with one line; in step, it stores every batch", async (t) => {
  const day = 86_400_000_000_000n;
  const wallNs = () => BigInt(Date.now()) * 1_000_000n;
  const ship = async (collectorNow: () => bigint) => {
    const logs: string[] = [];
    const dir = await Deno.makeTempDir({ prefix: "shipper_test_" });
    const collector = await startCollector({
      dbPath: `${dir}/flows.db`,
      port: 0,
      logger: () => {},
      now: collectorNow,
    });
    try {
      const shipper = new Shipper(
        options(
          `${dir}/spool`,
          { collectorUrl: `${collector.url}/v1/batches`, maxRecords: 5 },
          logs,
        ),
      );
      await shipper.start();
      for (let i = 0; i < 5; i++) shipper.add(syntheticFlow(i));
      const stats = await shipper.close(5000);
      const rejected = await Array.fromAsync(Deno.readDir(`${dir}/spool/rejected`));
      return { stats, logs, rejected, stored: collector.store.counts() };
    } finally {
      await collector.close();
      await Deno.remove(dir, { recursive: true });
    }
  };
  await t.step("the collector's clock two days behind the agent's", async () => {
    const { stats, logs, rejected, stored } = await ship(() => wallNs() - 2n * day);
    assert.equal(stats.batchesRejected, 2, "the full batch and the shutdown batch");
    assert.equal(rejected.length, 2, "both kept in rejected/");
    assert.equal(stored.batches, 0);
    const lines = logs.filter((l) => l.startsWith("error: "));
    assert.equal(lines.length, 2, logs.join("\n"));
    for (const line of lines) {
      assert.match(
        line,
        /^error: Collector .* refused batch node-1:\d+ for good \(HTTP 400: Batch: window_end_ns \d+ is \d+ s ahead of the collector's clock, more than the 86400 s allowed \(check the exporter's clock; collector --max-clock-skew-seconds\)\): kept in .*rejected.*, not retried/,
      );
    }
  });
  await t.step("in step: every batch the agent makes is accepted", async () => {
    const { stats, rejected, stored } = await ship(wallNs);
    assert.equal(stats.batchesRejected, 0);
    assert.equal(rejected.length, 0);
    assert.equal(stats.batchesSent, 2);
    assert.equal(stored.flows, 5);
  });
});

Deno.test("an invalid flow is dropped, counted and logged, not thrown", async () => {
  await withSpoolDir(async (dir) => {
    const logs: string[] = [];
    const shipper = new Shipper(options(dir, {}, logs));
    await shipper.start();
    shipper.add({ ...syntheticFlow(1), localPort: -1 });
    shipper.add(syntheticFlow(2));
    const stats = await shipper.close(0);
    assert.equal(stats.recordsInvalid, 1);
    assert.equal(stats.recordsAdded, 1);
    assert.deepEqual(logs.filter((l) => l.startsWith("warn: Dropped")), [
      "warn: Dropped an invalid flow (1 so far): Flow: local_port must be an unsigned integer up to 65535, got -1",
    ]);
  });
});

/** A shipper whose one batch of 5 flows failed a round; it now pauses a whole minute. */
async function pausedAfterFailedRound(dir: string, collectorUrl: string): Promise<Shipper> {
  const shipper = new Shipper(
    options(dir, {
      collectorUrl,
      maxRecords: 5,
      maxAttempts: 1,
      // Every pause is the whole minute: only close() can cut it short.
      baseDelayMs: 60_000,
      maxDelayMs: 60_000,
      random: () => 0.999,
    }),
  );
  await shipper.start();
  for (let i = 0; i < 5; i++) shipper.add(syntheticFlow(i));
  await until(() => shipper.stats().batchesFailed === 1, "a failed round");
  return shipper;
}

Deno.test("close() cuts a retry pause short and makes a last delivery round", async () => {
  await withSpoolDir(async (dir) => {
    let down = true;
    const up = collector({ status: () => (down ? 503 : 200) });
    try {
      const shipper = await pausedAfterFailedRound(dir, up.url);
      down = false; // the collector is back while the shipper waits out its pause
      const started = performance.now();
      const stats = await shipper.close(10_000);
      assert.ok(performance.now() - started < 5_000, "close() did not wait out the pause");
      assert.equal(stats.batchesSent, 2, "the waiting batch and the shutdown batch");
      assert.equal(stats.spoolFiles, 0);
      assert.equal(up.counts().size, 5);
    } finally {
      await up.server.shutdown();
    }
  });
});

Deno.test("close() with the collector still down ends after one last round", async () => {
  await withSpoolDir(async (dir) => {
    const down = collector({ status: () => 503 });
    try {
      const shipper = await pausedAfterFailedRound(dir, down.url);
      const started = performance.now();
      const stats = await shipper.close(30_000);
      assert.ok(performance.now() - started < 5_000, "close() did not wait for its deadline");
      assert.equal(stats.batchesSent, 0);
      assert.equal(stats.spoolFiles, 2, "both batches wait in the spool for the next start");
    } finally {
      await down.server.shutdown();
    }
  });
});

Deno.test({
  name: "a batch that finds no room is not sealed, is logged once, and the next batch reports it",
  // Skipped on a developer machine without the mount capability; under CI it must run.
  ignore: !CAN_MOUNT_TMPFS && !Deno.env.get("CI"),
  fn: async () => {
    // Before: an error line per window ("the flows are lost"), and no batch header said so.
    await withTinyFs(1024 * 1024, async (mnt) => {
      const dir = `${mnt}/spool`;
      const logs: string[] = [];
      const sealed: number[] = [];
      const shipper = new Shipper(options(dir, {
        maxRecords: 2000,
        onSpooled: (window) => sealed.push(window),
      }, logs));
      await shipper.start();
      const filler = await fillUp(mnt, 16 * 1024); // no room for a batch of 2000 flows
      for (let window = 0; window < 3; window++) {
        for (let i = 0; i < 2000; i++) shipper.add(syntheticFlow(window * 2000 + i));
        await until(() => shipper.stats().batchesLost === window + 1, `window ${window}`);
      }
      assert.deepEqual(sealed, [], "their flows stay in the capture journal");
      const errors = logs.filter((l) => l.startsWith("error: Cannot spool batch"));
      assert.equal(errors.length, 1, "one line for the incident");
      assert.match(
        errors[0],
        /of 2000 flows: the spool's file system is full \(No space left on device \(os error 28\)\) and no unsent batch is left to evict \(the flows are lost, and reported in the next batch's spool_evictions/,
      );
      await Deno.remove(filler);
      for (let i = 0; i < 2000; i++) shipper.add(syntheticFlow(6000 + i));
      await until(() => shipper.stats().batchesSpooled === 1, "a batch with room again");
      assert.deepEqual(sealed, [3]);
      assert.ok(
        logs.some((l) =>
          /^warn: Spooling works again with batch \d+: 3 batches \(6000 flows\) could not be spooled meanwhile/
            .test(l)
        ),
      );
      await shipper.close(0);
      const [first] = await spooled(dir);
      assert.equal(first.header.loss.spoolEvictions, 3, "the loss reaches the collector");
    });
  },
});
