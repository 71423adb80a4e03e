import assert from "node:assert/strict";
import { ClockAnchor, toWallNs } from "../lib/clock.ts";
import { DecodeError, decodeFlow, decodeFlows, flowEnd, RECORD_SIZE } from "../lib/decode.ts";
import { formatFlowJson, parseFlowJson } from "../lib/json_lines.ts";

/** A `struct fe_flow` written field by field from the offsets in bpf/flowexporter.h. */
function rawRecord(fields: {
  family: number;
  local: number[];
  remote: number[];
  workload?: string;
  closeState?: number;
  error?: number;
  flags?: number;
}): Uint8Array {
  const buf = new Uint8Array(RECORD_SIZE);
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, 1_000n, true); // t_start_ns
  v.setBigUint64(8, 5_000n, true); // t_end_ns
  v.setBigUint64(16, 2n ** 40n + 7n, true); // bytes_sent (above 2^32)
  v.setBigUint64(24, 90n, true); // bytes_acked
  v.setBigUint64(32, 40_000n, true); // bytes_received
  v.setUint32(40, 11, true); // segs_out
  v.setUint32(44, 12, true); // segs_in
  v.setUint32(48, 3, true); // total_retrans
  v.setUint32(52, 250, true); // srtt_us
  v.setUint32(56, 20, true); // min_rtt_us
  v.setUint32(60, 9, true); // delivered
  v.setUint32(64, 1, true); // lost
  buf.set(fields.local, 72);
  buf.set(fields.remote, 88);
  v.setUint16(104, 43210, true); // local_port
  v.setUint16(106, 443, true); // remote_port
  buf[108] = fields.family;
  buf[109] = 1; // outbound
  buf[110] = fields.closeState ?? 5; // FIN_WAIT2
  buf[111] = 2; // ip-map
  buf[112] = fields.flags ?? 0;
  buf[113] = fields.error ?? 0;
  if (fields.workload) buf.set(new TextEncoder().encode(fields.workload), 120);
  return buf;
}

const V4_MAPPED = (a: number, b: number, c: number, d: number) => [
  ...new Array(10).fill(0),
  0xff,
  0xff,
  a,
  b,
  c,
  d,
];

Deno.test("decodeFlow() decodes every field of an IPv4 record", () => {
  const bytes = rawRecord({
    family: 4,
    local: V4_MAPPED(10, 0, 0, 1),
    remote: V4_MAPPED(192, 0, 2, 7),
    workload: "spiffe://example.org/ns/a/sa/web",
  });
  const r = decodeFlow(bytes, 0, 1_700_000_000_000_000_000n);
  assert.equal(r.family, 4);
  assert.deepEqual([...r.localIp], [10, 0, 0, 1]);
  assert.deepEqual([...r.remoteIp], [192, 0, 2, 7]);
  assert.equal(r.localPort, 43210);
  assert.equal(r.remotePort, 443);
  assert.equal(r.localWorkloadId, "spiffe://example.org/ns/a/sa/web");
  assert.equal(r.identitySource, "ip-map");
  assert.equal(r.tStartNs, 1_700_000_000_000_001_000n);
  assert.equal(r.tEndNs, 1_700_000_000_000_005_000n);
  assert.equal(r.direction, "outbound");
  assert.equal(r.closeState, "FIN_WAIT2");
  assert.equal(r.end, "normal");
  assert.equal(r.seeded, false);
  assert.equal(r.bytesSent, 2 ** 40 + 7);
  assert.equal(r.bytesAcked, 90);
  assert.equal(r.bytesReceived, 40_000);
  assert.deepEqual(
    [r.segsOut, r.segsIn, r.totalRetrans, r.srttUs, r.minRttUs, r.delivered, r.lost],
    [11, 12, 3, 250, 20, 9, 1],
  );
});

Deno.test("decodeFlow() keeps all 16 bytes of an IPv6 address and reads the seeded flag", () => {
  const local = [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1];
  const remote = [...new Array(15).fill(0), 1];
  const r = decodeFlow(rawRecord({ family: 6, local, remote, flags: 1 }), 0, 0n);
  assert.equal(r.family, 6);
  assert.deepEqual([...r.localIp], local);
  assert.deepEqual([...r.remoteIp], remote);
  assert.equal(r.seeded, true);
  assert.equal(r.localWorkloadId, "");
});

Deno.test("decodeFlows() decodes back-to-back records at their offsets", () => {
  const a = rawRecord({
    family: 4,
    local: V4_MAPPED(127, 0, 1, 1),
    remote: V4_MAPPED(127, 0, 0, 1),
  });
  const b = rawRecord({
    family: 4,
    local: V4_MAPPED(127, 0, 1, 2),
    remote: V4_MAPPED(127, 0, 0, 1),
  });
  const both = new Uint8Array(2 * RECORD_SIZE);
  both.set(a, 0);
  both.set(b, RECORD_SIZE);
  const records = decodeFlows(both, 0n);
  assert.deepEqual(records.map((r) => r.localIp[3]), [1, 2]);
});

Deno.test("decodeFlows() rejects a buffer that is not whole records", () => {
  assert.throws(
    () => decodeFlows(new Uint8Array(RECORD_SIZE + 10), 0n),
    (e: unknown) => e instanceof DecodeError && /258 bytes.*multiple of 248/.test(e.message),
  );
});

Deno.test("decodeFlow() rejects a short buffer and an unknown family", () => {
  assert.throws(() => decodeFlow(new Uint8Array(100), 0, 0n), DecodeError);
  assert.throws(
    () => decodeFlow(rawRecord({ family: 9, local: [], remote: [] }), 0, 0n),
    /family 9/,
  );
});

Deno.test("decodeFlow() bounds a workload ID that fills its field without a NUL", () => {
  const r = decodeFlow(
    rawRecord({ family: 4, local: V4_MAPPED(1, 2, 3, 4), remote: [], workload: "w".repeat(128) }),
    0,
    0n,
  );
  assert.equal(r.localWorkloadId, "w".repeat(128));
});

Deno.test("flowEnd() classifies how connections end", () => {
  assert.equal(flowEnd("SYN_SENT", 111), "refused");
  assert.equal(flowEnd("SYN_SENT", 110), "timeout");
  assert.equal(flowEnd("ESTABLISHED", 104), "reset");
  assert.equal(flowEnd("CLOSE_WAIT", 32), "reset");
  assert.equal(flowEnd("SYN_SENT", 113), "failed");
  assert.equal(flowEnd("ESTABLISHED", 0), "aborted");
  assert.equal(flowEnd("FIN_WAIT2", 0), "normal");
  assert.equal(flowEnd("LAST_ACK", 0), "normal");
  assert.equal(flowEnd("CLOSING", 0), "normal");
  assert.equal(flowEnd("UNKNOWN", 0), "unknown");
});

Deno.test("toWallNs() adds the offset exactly beyond 2^53", () => {
  assert.equal(toWallNs(123_456_789n, 1_764_000_000_000_000_001n), 1_764_000_000_123_456_790n);
});

Deno.test("ClockAnchor re-measures only when the interval has passed", () => {
  let now = 0;
  const readings = [100n, 250n, 400n];
  const anchor = new ClockAnchor(
    () => ({ offsetNs: readings.shift()!, uncertaintyNs: 50n }),
    1000,
    () => now,
  );
  assert.equal(anchor.offsetNs(), 100n);
  now = 999;
  assert.equal(anchor.offsetNs(), 100n);
  now = 1000;
  assert.equal(anchor.offsetNs(), 250n);
  now = 1500;
  assert.equal(anchor.offsetNs(), 250n);
  assert.equal(readings.length, 1);
});

Deno.test("formatFlowJson() writes exact ns times that parseFlowJson() reads back", () => {
  const r = decodeFlow(
    rawRecord({
      family: 4,
      local: V4_MAPPED(127, 0, 1, 1),
      remote: V4_MAPPED(127, 0, 0, 1),
      workload: 'a"b',
    }),
    0,
    1_764_171_840_123_456_789n,
  );
  const line = formatFlowJson(r);
  assert.ok(!line.includes("\n"));
  const back = parseFlowJson(line);
  assert.equal(back.t_start_ns, 1_764_171_840_123_457_789n);
  assert.equal(back.t_end_ns, 1_764_171_840_123_461_789n);
  assert.equal(back.local_ip, "127.0.1.1");
  assert.equal(back.local_workload_id, 'a"b');
  assert.equal(back.bytes_sent, 2 ** 40 + 7);
  assert.equal(back.end, "normal");
});
