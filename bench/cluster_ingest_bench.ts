/**
 * The per-flow work of a cluster node's ingest, in one process and without I/O: what each batch
 * costs before the NATS client and HTTP. Over the cluster bench's batches of calls
 * (bench/_cluster_fleet.ts), each round times, per flow:
 * - decode: gunzip and the wire decoder with its checks (lib/wire.ts), as every collector does;
 * - rows: `prepareBatch` (collector/cluster/node.ts), the ClickHouse rows, their gzip, the remote
 *   keys and ends;
 * - entry: the batch entry's CBOR (collector/cluster/messages.ts).
 *
 *   deno run -A bench/cluster_ingest_bench.ts [--batches 100] [--flows 200] [--rounds 12]
 *
 * Every round is printed; the summary gives the median and the worst after the first two (V8
 * compiles then).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { gunzipSync } from "node:zlib";
import { prepareBatch } from "../collector/cluster/node.ts";
import { encodeBatchEntry } from "../collector/cluster/messages.ts";
import { batchDigest } from "../collector/ingest.ts";
import { batchDecoder, type DecodedBatch } from "../lib/wire.ts";
import { SyntheticFleet } from "./_cluster_fleet.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    batches: { type: "string", default: "100" },
    flows: { type: "string", default: "200" },
    rounds: { type: "string", default: "12" },
  },
});
const hosts = Number(values.batches);
const rounds = Number(values.rounds);
const { traffic, heartbeats } = new SyntheticFleet(Number(values.flows)).batches(0, hosts, 1);
const flows = traffic.length * Number(values.flows);
const decode = batchDecoder({ maxRecords: 200_000 });

const parts = ["decode", "rows", "entry"] as const;
const figures: Record<(typeof parts)[number], number[]> = { decode: [], rows: [], entry: [] };
console.log(
  `${traffic.length} batches of ${values.flows} calls (${heartbeats.length} heartbeat batches unused)`,
);
for (let round = 1; round <= rounds; round++) {
  let t = performance.now();
  const decoded: [DecodedBatch, Uint8Array][] = traffic.map((body) => {
    const cbor = gunzipSync(body);
    return [decode(cbor), cbor];
  });
  figures.decode.push((performance.now() - t) * 1000 / flows);
  t = performance.now();
  const entries = decoded.map(([batch, cbor]) => prepareBatch(batch, batchDigest(cbor), 1n));
  figures.rows.push((performance.now() - t) * 1000 / flows);
  t = performance.now();
  for (const entry of entries) encodeBatchEntry(entry);
  figures.entry.push((performance.now() - t) * 1000 / flows);
  console.log(
    `round ${round}: ${
      parts.map((p) => `${p} ${figures[p].at(-1)!.toFixed(2)}`).join(", ")
    } µs/flow`,
  );
}
const settled = (values: number[]) =>
  values.slice(Math.min(2, values.length - 1)).sort((a, b) => a - b);
console.log("Summary, µs per flow (median / worst after the first two rounds):");
for (const part of parts) {
  const v = settled(figures[part]);
  console.log(
    `  ${part.padEnd(6)} ${v[Math.floor(v.length / 2)].toFixed(2)} / ${v.at(-1)!.toFixed(2)}`,
  );
}
