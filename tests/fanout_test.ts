/** The per-batch fan-out of the agent, with synthetic records and no kernel. */
import assert from "node:assert/strict";
import { type RecordChunk, RecordFanout, tallyRecords } from "../lib/fanout.ts";
import { parseFlowJson } from "../lib/json_lines.ts";
import { agentMetrics, MetricsRegistry } from "../lib/metrics.ts";
import { rawRecord, rawRecords } from "./_raw_records.ts";

const BOOT = new Uint8Array(16).fill(7);

/** One poll's records, as the intake hands them on. */
function chunkOf(records: Uint8Array): RecordChunk {
  return { records, clockOffsetNs: 0n, bootId: BOOT };
}

/** A fan-out to a working stdout, the lines it wrote, and its metrics. */
function collectingFanout() {
  const metrics = agentMetrics(new MetricsRegistry());
  const out: string[] = [];
  const fanout = new RecordFanout({
    writeStdout: (bytes) => out.push(new TextDecoder().decode(bytes)),
    metrics,
    onStdoutFailed: () => assert.fail("stdout works"),
    nowNs: () => 2_000_000_000n,
  });
  const lines = () => out.join("").trimEnd().split("\n").map(parseFlowJson);
  return { fanout, metrics, lines };
}

Deno.test("take() writes one JSON line per record and counts them", () => {
  const { fanout, metrics, lines: written } = collectingFanout();
  fanout.take(chunkOf(rawRecords(3, 10n)));
  const lines = written();
  assert.deepEqual(lines.map((l) => (l.flow_id as string).split(":")[1]), ["10", "11", "12"]);
  assert.equal(metrics.flowsCaptured.get(), 3);
  assert.equal(metrics.bySource["ip-map"].get(), 3);
});

Deno.test("takeInterim() writes interim records as JSON lines and counts them apart", () => {
  const { fanout, metrics, lines } = collectingFanout();
  fanout.takeInterim(chunkOf(rawRecord({ flags: 4, closeState: 1 })));
  const [line] = lines();
  assert.equal(line.record_kind, "interim");
  assert.equal(line.end, "open");
  assert.equal(metrics.interimRecords.get(), 1);
  assert.equal(metrics.flowsCaptured.get(), 0, "an open socket is no captured flow");
});

Deno.test("a failing stdout stops the JSON lines, reports once, and the counting goes on", () => {
  const metrics = agentMetrics(new MetricsRegistry());
  const failures: unknown[] = [];
  let writes = 0;
  const fanout = new RecordFanout({
    writeStdout: () => {
      writes++;
      throw new Deno.errors.BrokenPipe("broken pipe");
    },
    metrics,
    onStdoutFailed: (error) => failures.push(error),
  });
  fanout.take(chunkOf(rawRecords(2)));
  fanout.take(chunkOf(rawRecords(2, 5n)));
  assert.equal(writes, 1);
  assert.equal(failures.length, 1);
  assert.equal(fanout.writingJson, false);
  assert.equal(metrics.flowsCaptured.get(), 4);
});

Deno.test("tallyRecords() counts sources, records made at destroy, and the oldest end", () => {
  const bytes = new Uint8Array([
    ...rawRecord({ identitySource: 3, tEndNs: 900n }),
    ...rawRecord({ identitySource: 0, closeState: 0, tEndNs: 700n }),
    ...rawRecord({ identitySource: 3, tEndNs: 800n }),
  ]);
  const tally = tallyRecords({ ...chunkOf(bytes), clockOffsetNs: 1_000n });
  assert.deepEqual(tally.bySource, { "port-map": 2, "ip-map": 0, host: 0, unknown: 1 });
  assert.equal(tally.recovered, 1);
  assert.equal(tally.oldestEndNs, 1_700n, "the oldest end, on the wall clock");
});

Deno.test("a record the decoder refuses is left out of the JSON lines, not fatal", () => {
  const out: string[] = [];
  const fanout = new RecordFanout({
    writeStdout: (bytes) => out.push(new TextDecoder().decode(bytes)),
    metrics: agentMetrics(new MetricsRegistry()),
    onStdoutFailed: () => assert.fail("stdout works"),
  });
  fanout.take(chunkOf(new Uint8Array([...rawRecord(), ...rawRecord({ family: 9 as 4 })])));
  assert.equal(out.join("").trimEnd().split("\n").length, 1);
});
