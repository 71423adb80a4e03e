import assert from "node:assert/strict";
import { ClockAnchor, toWallNs } from "../lib/clock.ts";
import {
  DecodeError,
  decodeFlow,
  decodeFlows,
  FLAG_INTERIM,
  FLAG_SEEDED,
  FLAG_SOCKOPS,
  FLAG_SWEPT,
  flowEnd,
  RECORD_OFFSETS,
  RECORD_SIZE,
  RECORD_VERSION,
} from "../lib/decode.ts";
import { SYMBOLS } from "../ffi/symbols.ts";
import { headerDefines } from "./_c_source.ts";
import { rawRecord, v4Mapped } from "./_raw_records.ts";
import { formatFlowJson, parseFlowJson } from "../lib/json_lines.ts";

const BOOT = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const V4_MAPPED = v4Mapped;

Deno.test("the decoder's record layout is the built library's, field by field", () => {
  // The shim asserts each offset with offsetof at build time and reports them here: a field
  // moved or two same-sized fields swapped in bpf/flowexporter.h fails the build or this test.
  const lib = Deno.dlopen(new URL("../build/libflowexporter.so", import.meta.url).pathname, {
    fe_record_size: SYMBOLS.fe_record_size,
    fe_record_version: SYMBOLS.fe_record_version,
    fe_record_offsets: SYMBOLS.fe_record_offsets,
  });
  try {
    const names = Object.keys(RECORD_OFFSETS);
    const offsets = new Uint32Array(names.length + 1);
    const n = lib.symbols.fe_record_offsets(offsets, offsets.length);
    assert.equal(n, names.length, "as many fields as the decoder reads");
    assert.deepEqual([...offsets.subarray(0, n)], Object.values(RECORD_OFFSETS));
    assert.equal(lib.symbols.fe_record_size(), RECORD_SIZE);
    assert.equal(lib.symbols.fe_record_version(), RECORD_VERSION);
  } finally {
    lib.close();
  }
});

Deno.test("the decoder's flag bits and record version are the shared header's", () => {
  assert.deepEqual(headerDefines("FE_FLAG_"), {
    SEEDED: FLAG_SEEDED,
    SOCKOPS: FLAG_SOCKOPS,
    INTERIM: FLAG_INTERIM,
    SWEPT: FLAG_SWEPT,
  });
  assert.equal(headerDefines("FE_FLOW_").VERSION, RECORD_VERSION);
});

Deno.test("decodeFlow() decodes every field of an IPv4 record", () => {
  const bytes = rawRecord({
    family: 4,
    local: V4_MAPPED(10, 0, 0, 1),
    remote: V4_MAPPED(192, 0, 2, 7),
    workload: "spiffe://example.org/ns/a/sa/web",
  });
  const r = decodeFlow(bytes, 0, 1_700_000_000_000_000_000n, BOOT);
  assert.equal(r.bootId, BOOT);
  assert.equal(r.cookie, 4242n);
  assert.equal(r.bytesRetrans, 1448);
  assert.equal(r.closeSeenBy, "tracepoint");
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
  const r = decodeFlow(rawRecord({ family: 6, local, remote, flags: 1 }), 0, 0n, BOOT);
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
  const records = decodeFlows(both, 0n, BOOT);
  assert.deepEqual(records.map((r) => r.localIp[3]), [1, 2]);
});

Deno.test("decodeFlows() rejects a buffer that is not whole records", () => {
  assert.throws(
    () => decodeFlows(new Uint8Array(RECORD_SIZE + 10), 0n, BOOT),
    (e: unknown) => e instanceof DecodeError && /274 bytes.*multiple of 264/.test(e.message),
  );
});

Deno.test("decodeFlow() rejects a short buffer and an unknown family", () => {
  assert.throws(() => decodeFlow(new Uint8Array(100), 0, 0n, BOOT), DecodeError);
  assert.throws(
    () => decodeFlow(rawRecord({ family: 9 as 4 }), 0, 0n, BOOT),
    /family 9/,
  );
});

Deno.test("decodeFlow() bounds a workload ID that fills its field without a NUL", () => {
  const r = decodeFlow(
    rawRecord({ family: 4, local: V4_MAPPED(1, 2, 3, 4), workload: "w".repeat(128) }),
    0,
    0n,
    BOOT,
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
    BOOT,
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
  assert.equal(back.flow_id, "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf:4242");
  assert.equal(back.bytes_retrans, 1448);
  assert.equal(back.close_seen_by, "tracepoint");
});

Deno.test("decodeFlow() names the program that saw the close", () => {
  const seenBy = (fields: Parameters<typeof rawRecord>[0]) =>
    decodeFlow(rawRecord(fields), 0, 0n, BOOT).closeSeenBy;
  assert.equal(seenBy({ flags: 2 }), "sock_ops");
  assert.equal(seenBy({ flags: 3 }), "sock_ops");
  assert.equal(seenBy({ closeState: 0 }), "destroy");
  assert.equal(seenBy({ closeState: 7 }), "tracepoint");
  assert.equal(seenBy({ flags: 8 }), "sweep");
});
