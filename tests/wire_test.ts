import assert from "node:assert/strict";
import { rawCbor } from "./_batches.ts";
import { gunzipSync, gzipSync } from "node:zlib";
import type { FlowRecord } from "../lib/flow.ts";
import {
  decodeFlowId,
  encodeFlowId,
  formatFlowId,
  hasFlowId,
  NO_BOOT_ID,
  parseBootId,
} from "../lib/flow_id.ts";
import { formatFlowJson, parseFlowJson } from "../lib/json_lines.ts";
import { SYNTHETIC_BOOT_ID, syntheticFlow } from "./_synthetic_flows.ts";
import { TCP_STATES } from "../lib/flow.ts";
import {
  batchDecoder,
  type BatchHeader,
  decodeBatch,
  encodeBatch,
  encodeBatchHead,
  encodeFlow,
  encodeFlowInto,
  idempotencyKey,
  maxFlowBytes,
  MIN_FLOW_BYTES,
  SCHEMA_VERSION,
  WireFormatError,
  WireLimitError,
} from "../lib/wire.ts";

function header(recordCount: number, extra: Partial<BatchHeader> = {}): BatchHeader {
  return {
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "0.1.0-test",
    host: {
      hostname: "node-1.example",
      workloadId: "k8s://kube-system/node-agent",
      instanceId: "i-0abc",
    },
    sequence: 42,
    windowStartNs: 1_767_225_600_000_000_000n,
    windowEndNs: 1_767_225_660_000_000_000n,
    recordCount,
    clockOffsetNs: 1_767_000_000_123_456_789n,
    loss: { kernelDrops: 3n, recursionMisses: 9_223_372_036_854_775_807n, spoolEvictions: 2 },
    ...extra,
  };
}

function batchOf(records: FlowRecord[], extra: Partial<BatchHeader> = {}): Uint8Array {
  return encodeBatch(header(records.length, extra), records.map(encodeFlow));
}

/** Re-encodes a valid batch after `mutate` changed its raw CBOR maps. */
function tampered(mutate: (top: Map<number, unknown>, flows: Map<number, unknown>[]) => void) {
  const top = rawCbor.decoder.decode(batchOf([syntheticFlow(1), syntheticFlow(2)])) as Map<
    number,
    unknown
  >;
  mutate(top, top.get(9) as Map<number, unknown>[]);
  return new Uint8Array(rawCbor.encoder.encode(top));
}

function rejects(bytes: Uint8Array, message: string) {
  assert.throws(() => decodeBatch(bytes), (error: unknown) => {
    assert.ok(error instanceof WireFormatError);
    assert.equal(error.name, "WireFormatError");
    assert.equal(error.message, message);
    return true;
  });
}

Deno.test("decodeBatch() returns exactly what encodeBatch() was given, IPv4 and IPv6", () => {
  const v4: FlowRecord = {
    bootId: parseBootId("5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60"),
    cookie: 18_446_744_073_709_551_615n,
    family: 4,
    localIp: Uint8Array.of(10, 1, 2, 3),
    localPort: 8080,
    remoteIp: Uint8Array.of(192, 0, 2, 200),
    remotePort: 51234,
    localWorkloadId: "k8s://payments/api-7d9f8c6b5-x2x9z#main",
    identitySource: "port-map",
    tStartNs: 1_767_225_601_000_000_001n,
    tEndNs: 9_223_372_036_854_775_807n,
    recordKind: "final",
    seeded: true,
    direction: "inbound",
    closeState: "LAST_ACK",
    end: "normal",
    error: 0,
    bytesSent: 9_007_199_254_740_991,
    bytesRetrans: 9_007_199_254_740_990,
    bytesAcked: 4_294_967_296,
    bytesReceived: 4_294_967_295,
    segsOut: 4_294_967_295,
    segsIn: 1,
    totalRetrans: 2,
    srttUs: 1234,
    minRttUs: 0,
    delivered: 77,
    lost: 3,
  };
  const v6: FlowRecord = {
    ...v4,
    bootId: new Uint8Array(16),
    cookie: 0n,
    family: 6,
    localIp: Uint8Array.from({ length: 16 }, (_, i) => i * 17),
    remoteIp: Uint8Array.of(0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
    localWorkloadId: "",
    identitySource: "unknown",
    tStartNs: 0n,
    tEndNs: 5n,
    seeded: false,
    direction: "outbound",
    closeState: "SYN_SENT",
    end: "refused",
    error: 111,
    bytesSent: 0,
    bytesRetrans: 0,
  };
  const decoded = decodeBatch(batchOf([v4, v6]));
  assert.deepEqual(decoded, { header: header(2), flows: [v4, v6] });
  assert.equal(Object.getPrototypeOf(decoded.flows[1].localIp), Uint8Array.prototype);
  assert.equal(Object.getPrototypeOf(decoded.flows[0].bootId), Uint8Array.prototype);
});

Deno.test("every enumeration value and header variant survives a round trip", async (t) => {
  await t.step("enumerations, unknown TCP state names included", () => {
    const records = [
      ...["unknown", "outbound", "inbound"].map((direction, i) => ({
        ...syntheticFlow(i),
        direction,
      })),
      ...["unknown", "host", "ip-map", "port-map"].map((identitySource, i) => ({
        ...syntheticFlow(i),
        identitySource,
      })),
      ...["normal", "reset", "aborted", "refused", "timeout", "failed"].map((end, i) => ({
        ...syntheticFlow(i),
        end,
      })),
      ...[...TCP_STATES, "STATE_14"].map((closeState, i) => ({
        ...syntheticFlow(i),
        closeState,
      })),
    ] as FlowRecord[];
    assert.deepEqual(decodeBatch(batchOf(records)).flows, records);
  });
  await t.step("no instance ID, negative clock offset, empty batch", () => {
    const h = header(0, {
      host: { hostname: "h", workloadId: "" },
      clockOffsetNs: -9_223_372_036_854_775_808n,
      sequence: 9_007_199_254_740_991,
    });
    assert.deepEqual(decodeBatch(encodeBatch(h, [])), { header: h, flows: [] });
  });
  await t.step("flows split across chunks at arbitrary byte boundaries", () => {
    const records = Array.from({ length: 100 }, (_, i) => syntheticFlow(i));
    const all = records.map(encodeFlow);
    const joined = new Uint8Array(all.reduce((n, b) => n + b.length, 0));
    all.reduce((offset, b) => (joined.set(b, offset), offset + b.length), 0);
    const chunks = [joined.subarray(0, 7), joined.subarray(7, 1000), joined.subarray(1000)];
    assert.deepEqual(decodeBatch(encodeBatch(header(100), chunks)).flows, records);
  });
});

Deno.test("the wire layout uses small integer keys with the heartbeat key first", () => {
  const record = syntheticFlow(3);
  const flowBytes = encodeFlow(record);
  const flow = rawCbor.decoder.decode(flowBytes) as Map<number, unknown>;
  assert.deepEqual([...flow.keys()], Array.from({ length: 27 }, (_, i) => i));
  assert.deepEqual([...(flow.get(0) as Uint8Array)], [...record.localIp]);
  assert.equal(flow.get(1), record.localWorkloadId);
  assert.equal(flow.get(2), record.tStartNs);
  assert.equal(flow.get(3), record.tEndNs);
  assert.deepEqual(flow.get(24), encodeFlowId(record.bootId, record.cookie));
  assert.equal(flow.get(25), record.bytesRetrans);
  assert.equal(flow.get(26), 0, "record_kind final");
  assert.deepEqual([...flowBytes.subarray(0, 2)], [0xb8, 27], "a map of 27 entries");
  assert.deepEqual([...flowBytes.subarray(2, 4)], [0x00, 0x44], "key 0, a 4-byte byte string");
  const top = rawCbor.decoder.decode(batchOf([record])) as Map<number, unknown>;
  assert.deepEqual([...top.keys()], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.ok(flowBytes.length < 180, `an IPv4 flow takes ${flowBytes.length} bytes`);
});

Deno.test("decodeBatch() reads the flows wherever the batch map puts them", () => {
  // Exporters write the flows last, which the first pass leaves to the second; a map in any
  // other order is walked whole first, and reads the same.
  const records = [syntheticFlow(1), syntheticFlow(2)];
  const body = batchOf(records);
  const top = rawCbor.decoder.decode(body) as Map<number, unknown>;
  const flowsFirst = new Map([[9, top.get(9)], ...[...top].filter(([key]) => key !== 9)]);
  assert.deepEqual([...flowsFirst.keys()], [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
  const reordered = new Uint8Array(rawCbor.encoder.encode(flowsFirst));
  assert.notDeepEqual(reordered, body);
  assert.deepEqual(decodeBatch(reordered), decodeBatch(body));
  assert.deepEqual(decodeBatch(body).flows, records);
  // Bytes after flows that come last are refused once the flows are read.
  rejects(
    Uint8Array.of(...body, 0xa0),
    `Cannot decode batch: invalid CBOR (data after the end of the item at byte ${body.length}: 1 bytes)`,
  );
});

Deno.test("decodeBatch() rejects truncated CBOR and trailing bytes", () => {
  const body = batchOf([syntheticFlow(1), syntheticFlow(2)]);
  rejects(
    body.subarray(0, 1),
    "Cannot decode batch: truncated CBOR (the map at byte 0 declares 10 entries, but 0 bytes follow)",
  );
  rejects(
    body.subarray(0, 40),
    "Cannot decode batch: truncated CBOR (the text string at byte 34 declares 28 bytes, but 4 bytes follow)",
  );
  const half = Math.floor(body.length / 2);
  rejects(
    body.subarray(0, half),
    `Batch: flows declares 2 entries, but the ${
      half - 125
    } bytes that follow hold 1 flows at most (58 bytes each at least)`,
  );
  for (const end of [0, body.length - 1]) {
    rejects(
      body.subarray(0, end),
      `Cannot decode batch: truncated CBOR (${end} bytes end inside a data item)`,
    );
  }
  rejects(
    Uint8Array.of(...body, 0),
    `Cannot decode batch: invalid CBOR (data after the end of the item at byte ${body.length}: 1 bytes)`,
  );
});

Deno.test("decodeBatch() rejects a schema version it does not read", () => {
  for (const version of [0, 5, 7, 1.5]) {
    rejects(
      tampered((top) => top.set(0, version)),
      `Unsupported schema version ${version} (this collector reads 1 to 4)`,
    );
  }
  rejects(
    tampered((top) => top.set(0, "1")),
    'Batch: schema_version must be an unsigned integer, got text string "1"',
  );
  rejects(
    new Uint8Array(rawCbor.encoder.encode([1, 2])),
    "Batch: the batch must be a map, got array",
  );
});

Deno.test("decodeBatch() names the offending field for wrong types and values", () => {
  const cases: [string, (top: Map<number, unknown>, flows: Map<number, unknown>[]) => void][] = [
    ["Flow 1: local_ip must be 4 or 16 bytes, got 5", (_, f) => f[1].set(0, new Uint8Array(5))],
    [
      "Flow 0: remote_ip has 16 bytes but family is 4",
      (_, f) => f[0].set(6, new Uint8Array(16)),
    ],
    [
      'Flow 0: local_ip must be a byte string, got text string "10.0.0.1"',
      (_, f) => f[0].set(0, "10.0.0.1"),
    ],
    [
      "Flow 1: local_port must be an unsigned integer up to 65535, got 65536",
      (_, f) => f[1].set(5, 65536),
    ],
    [
      "Flow 0: t_end_ns must be an unsigned integer up to 9223372036854775807, got -1",
      (_, f) => f[0].set(3, -1),
    ],
    ["Flow 0: seeded must be a boolean, got 1", (_, f) => f[0].set(9, 1)],
    ["Flow 0: end must be an integer from 0 to 7, got 8", (_, f) => f[0].set(12, 8)],
    ["Flow 0: record_kind must be an integer from 0 to 1, got 2", (_, f) => f[0].set(26, 2)],
    ["Flow 1: missing record_kind (key 26)", (_, f) => f[1].delete(26)],
    [
      "Flow 0: end is open, but record_kind is final (only an interim record's flow is open)",
      (_, f) => f[0].set(12, 7),
    ],
    [
      "Flow 1: end is normal, but record_kind is interim (an interim record's end is open)",
      (_, f) => f[1].set(26, 1),
    ],
    ["Flow 0: close_state must be an integer from 0 to 13, got 14", (_, f) => f[0].set(11, 14)],
    ["Flow 0: family must be 4 or 6, got 5", (_, f) => f[0].set(4, 5)],
    [
      "Flow 0: srtt_us must be an unsigned integer up to 4294967295, got 1.5",
      (_, f) => f[0].set(20, 1.5),
    ],
    ["Flow 1: missing lost (key 23)", (_, f) => f[1].delete(23)],
    ["Flow 1: missing flow_id (key 24)", (_, f) => f[1].delete(24)],
    ["Flow 0: flow_id must be 24 bytes, got 23", (_, f) => f[0].set(24, new Uint8Array(23))],
    ["Flow 1: flow_id must be 24 bytes, got 16", (_, f) => f[1].set(24, SYNTHETIC_BOOT_ID)],
    [
      'Flow 0: flow_id must be a byte string, got text string "5b0f3c1e"',
      (_, f) => f[0].set(24, "5b0f3c1e"),
    ],
    [
      "Flow 0: bytes_retrans must be an unsigned integer up to 9007199254740991, got -1",
      (_, f) => f[0].set(25, -1),
    ],
    ["Flow 1: unknown key 27", (_, f) => f[1].set(27, 0)],
    ["Flow 0: the flow must be a map, got array", (_, f) => (f[0] as unknown as unknown[]) = []],
    ['Batch: sequence must be an unsigned integer up to 9007199254740991, got text string "x"', (
      top,
    ) => top.set(3, "x")],
    ["Batch: missing window_end_ns (key 5)", (top) => top.delete(5)],
    ["Batch: record_count is 3 but flows has 2 entries", (top) => top.set(6, 3)],
    ["Batch: flows must be an array, got map", (top) => top.set(9, new Map())],
    [
      "Batch: missing host.workload_id (key 1)",
      (top) => (top.get(2) as Map<number, unknown>).delete(1),
    ],
    ["Batch: unknown key 3 in loss", (top) => (top.get(8) as Map<number, unknown>).set(3, 0)],
    ['Batch: unknown key text string "x"', (top) => top.set("x" as unknown as number, 0)],
  ];
  for (const [message, mutate] of cases) rejects(tampered(mutate), message);
});

// Issue 11, case 7: values that cannot be true were accepted, and 64-bit counters above
// 2^63 - 1 were stored capped. The collector's clock decides what is in the future
// (tests/collector_hostile_test.ts); the wire format alone decides these.
Deno.test("decodeBatch() refuses a flow that ends before it starts, naming the field", () => {
  rejects(
    tampered((_, f) => f[1].set(3, BigInt(f[1].get(2) as bigint) - 1n)),
    `Flow 1: t_end_ns ${syntheticFlow(2).tStartNs - 1n} is before t_start_ns ${
      syntheticFlow(2).tStartNs
    } (a flow cannot end before it starts)`,
  );
  // Issue 14: an interim record's snapshot time before its start.
  rejects(
    tampered((_, f) => {
      f[0].set(26, 1).set(12, 7);
      f[0].set(3, BigInt(f[0].get(2) as bigint) - 1n);
    }),
    `Flow 0: t_end_ns ${syntheticFlow(1).tStartNs - 1n} is before t_start_ns ${
      syntheticFlow(1).tStartNs
    } (an interim record's snapshot cannot precede its flow's start)`,
  );
});

Deno.test("decodeBatch() refuses a window that ends before it starts, naming the field", () => {
  const { windowStartNs } = header(0);
  rejects(
    tampered((top) => top.set(5, windowStartNs - 1n)),
    `Batch: window_end_ns ${
      windowStartNs - 1n
    } is before window_start_ns ${windowStartNs} (a window cannot end before it starts)`,
  );
  // A window may end where it starts: closed on a cap the moment it opened.
  const empty = decodeBatch(batchOf([], { windowEndNs: windowStartNs }));
  assert.equal(empty.header.windowEndNs, windowStartNs);
});

Deno.test("decodeBatch() refuses 64-bit values above 2^63 - 1 rather than have them capped", () => {
  const over = 1n << 63n;
  const max = `an unsigned integer up to 9223372036854775807, got ${over}`;
  const loss = (top: Map<number, unknown>) => top.get(8) as Map<number, unknown>;
  rejects(tampered((top) => loss(top).set(0, over)), `Batch: loss.kernel_drops must be ${max}`);
  rejects(
    tampered((top) => loss(top).set(1, (1n << 64n) - 1n)),
    "Batch: loss.recursion_misses must be an unsigned integer up to 9223372036854775807, got 18446744073709551615",
  );
  rejects(tampered((top) => top.set(4, over)), `Batch: window_start_ns must be ${max}`);
  rejects(tampered((_, f) => f[0].set(3, over)), `Flow 0: t_end_ns must be ${max}`);
  rejects(tampered((_, f) => f[1].set(2, over)), `Flow 1: t_start_ns must be ${max}`);
});

Deno.test("encodeFlow() and encodeBatch() refuse the same impossible values", () => {
  const flow = syntheticFlow(1);
  assert.throws(() => encodeFlow({ ...flow, tEndNs: flow.tStartNs - 1n }), {
    name: "WireFormatError",
    message: `Flow: t_end_ns ${
      flow.tStartNs - 1n
    } is before t_start_ns ${flow.tStartNs} (a flow cannot end before it starts)`,
  });
  assert.throws(() => encodeFlow({ ...flow, tEndNs: 1n << 63n }), {
    message:
      "Flow: t_end_ns must be an unsigned integer up to 9223372036854775807, got 9223372036854775808",
  });
  const h = header(0);
  assert.throws(() => encodeBatch({ ...h, windowEndNs: h.windowStartNs - 1n }, []), {
    message: `Batch: window_end_ns ${
      h.windowStartNs - 1n
    } is before window_start_ns ${h.windowStartNs} (a window cannot end before it starts)`,
  });
  assert.throws(
    () => encodeBatch({ ...h, loss: { ...h.loss, kernelDrops: 1n << 63n } }, []),
    {
      message:
        "Batch: loss.kernel_drops must be an unsigned integer up to 9223372036854775807, got 9223372036854775808",
    },
  );
});

Deno.test("encodeFlow() refuses a record that would spoil the batch", () => {
  const bad = { ...syntheticFlow(1), localIp: new Uint8Array(5) };
  assert.throws(() => encodeFlow(bad), {
    name: "WireFormatError",
    message: "Flow: local_ip must be 4 or 16 bytes, got 5",
  });
  assert.throws(() => encodeFlow({ ...syntheticFlow(1), bytesSent: -1 }), {
    message: "Flow: bytes_sent must be an unsigned integer up to 9007199254740991, got -1",
  });
  assert.throws(() => encodeFlow({ ...syntheticFlow(1), closeState: "" }), {
    message: 'Flow: close_state must be a TCP state name, got text string ""',
  });
});

Deno.test("encodeBatch() writes only the schema version it knows", () => {
  assert.throws(() => encodeBatch(header(0, { schemaVersion: 2 }), []), {
    name: "WireFormatError",
    message: "Cannot encode schema version 2 (this exporter writes 4)",
  });
});

Deno.test("decodeBatch() copies the addresses out of the body", () => {
  const records = [syntheticFlow(1), syntheticFlow(2)];
  const body = batchOf(records);
  const { flows } = decodeBatch(body);
  for (const f of flows) {
    assert.notEqual(f.localIp.buffer, body.buffer);
    assert.notEqual(f.remoteIp.buffer, body.buffer);
  }
  body.fill(0);
  assert.deepEqual(
    flows.map((f) => [f.localIp, f.remoteIp]),
    records.map((r) => [r.localIp, r.remoteIp]),
  );
});

Deno.test("decodeBatch() reads version 1 and 2 batches, whose flows have no flow ID", async (t) => {
  /** A batch of `version` from a version-4 one: flows without keys 24 to 26 (25 for 3). */
  const older = (version: number, mutate = (_flows: Map<number, unknown>[]) => {}) =>
    tampered((top, flows) => {
      top.set(0, version);
      for (const flow of flows) {
        flow.delete(26);
        if (version < 3) (flow.delete(24), flow.delete(25));
      }
      mutate(flows);
    });
  const withoutFlowId = (r: FlowRecord): FlowRecord => ({
    ...r,
    bootId: NO_BOOT_ID,
    cookie: 0n,
    bytesRetrans: 0,
  });
  const unknownEnd = (flows: Map<number, unknown>[]) => flows[0].set(12, 6);
  await t.step("version 2: flow end unknown, no flow_id, no bytes_retrans", () => {
    const v2 = decodeBatch(older(2, unknownEnd));
    assert.equal(v2.header.schemaVersion, 2);
    assert.deepEqual(v2.flows, [
      { ...withoutFlowId(syntheticFlow(1)), end: "unknown" },
      withoutFlowId(syntheticFlow(2)),
    ]);
    assert.ok(v2.flows.every((f) => !hasFlowId(f)));
    rejects(older(2, (flows) => flows[0].set(24, new Uint8Array(24))), "Flow 0: unknown key 24");
  });
  await t.step("version 1: no flow end unknown either", () => {
    const v1 = decodeBatch(older(1));
    assert.equal(v1.header.schemaVersion, 1);
    assert.deepEqual(v1.flows, [syntheticFlow(1), syntheticFlow(2)].map(withoutFlowId));
    rejects(older(1, unknownEnd), "Flow 0: end must be an integer from 0 to 5, got 6");
  });
  await t.step("version 3: flow IDs, no record_kind: every record is final", () => {
    const v3 = decodeBatch(older(3));
    assert.equal(v3.header.schemaVersion, 3);
    assert.deepEqual(v3.flows, [syntheticFlow(1), syntheticFlow(2)]);
    rejects(older(3, (flows) => flows[0].set(26, 0)), "Flow 0: unknown key 26");
    rejects(
      older(3, (flows) => flows[0].set(12, 7)),
      "Flow 0: end must be an integer from 0 to 6, got 7",
    );
  });
  await t.step("version 4: the flows of one boot share one boot ID", () => {
    const { flows } = decodeBatch(batchOf([syntheticFlow(1), syntheticFlow(2)]));
    assert.equal(flows[0].bootId, flows[1].bootId);
    assert.deepEqual(flows[0].bootId, SYNTHETIC_BOOT_ID);
    assert.equal(flows[1].cookie, syntheticFlow(2).cookie);
  });
});

Deno.test("a flow ID is 24 bytes on the wire and <boot ID>:<cookie> as text", () => {
  const text = "5B0F3C1E-2D4A-4C8E-9F1A-0B2C3D4E5F60\n"; // as /proc holds it, bar the case
  const bootId = parseBootId(text);
  assert.deepEqual(bootId.subarray(0, 4), Uint8Array.of(0x5b, 0x0f, 0x3c, 0x1e));
  assert.equal(formatFlowId(bootId, 12_345n), "5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:12345");
  assert.equal(
    formatFlowId(bootId, (1n << 64n) - 1n),
    "5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:18446744073709551615",
  );
  const other = new Uint8Array(16).fill(0xab);
  assert.equal(formatFlowId(other, 1n), "abababab-abab-abab-abab-abababababab:1", "not cached");
  const bytes = encodeFlowId(bootId, 0x0102_0304_0506_0708n);
  assert.deepEqual([...bytes.subarray(16)], [1, 2, 3, 4, 5, 6, 7, 8], "cookie big-endian");
  assert.deepEqual(decodeFlowId(bytes), { bootId, cookie: 0x0102_0304_0506_0708n });
  assert.equal(decodeFlowId(bytes, bootId).bootId, bootId, "the same boot, the same instance");
  assert.notEqual(decodeFlowId(bytes, other).bootId, other);
  for (
    const bad of ["", "5b0f3c1e2d4a4c8e9f1a0b2c3d4e5f60", "5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f6g"]
  ) {
    assert.throws(() => parseBootId(bad), {
      name: "SyntaxError",
      message: `Invalid boot ID ${
        JSON.stringify(bad)
      }: expected a UUID such as 5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60`,
    });
  }
  assert.throws(() => formatFlowId(NO_BOOT_ID, 0n), RangeError);
});

Deno.test("formatFlowJson() writes flow_id first and bytes_retrans after bytes_sent", () => {
  const record = syntheticFlow(13);
  const line = formatFlowJson(record);
  assert.ok(line.startsWith(`{"flow_id":"${formatFlowId(SYNTHETIC_BOOT_ID, record.cookie)}",`));
  assert.match(line, /"bytes_sent":\d+,"bytes_retrans":\d+,"bytes_acked":/);
  const back = parseFlowJson(line);
  assert.equal(back.flow_id, `5b0f3c1e-2d4a-4c8e-9f1a-0b2c3d4e5f60:${record.cookie}`);
  assert.equal(back.bytes_retrans, record.bytesRetrans);
  assert.ok(record.bytesRetrans > 0);
  const old = parseFlowJson(formatFlowJson({ ...record, bootId: NO_BOOT_ID, cookie: 0n }));
  assert.equal(old.flow_id, null, "a flow of schema 1 or 2 has none");
  assert.equal(old.bytes_retrans, null);
});

Deno.test("idempotencyKey() joins hostname and sequence", () => {
  assert.equal(idempotencyKey("node-1", 42), "node-1:42");
});

// ---------------------------------------------------------------- the hand-written flow writer

/** The codes of the CDDL enumerations, by name (the index is the code). */
const CODES = {
  identitySource: ["unknown", "host", "ip-map", "port-map"],
  direction: ["unknown", "outbound", "inbound"],
  end: ["normal", "reset", "aborted", "refused", "timeout", "failed", "unknown", "open"],
  recordKind: ["final", "interim"],
  closeState: TCP_STATES as readonly string[],
};

/**
 * The flow encoding `lib/wire.ts` used before its hand-written writer: a map of keys 0 to 25
 * through cbor-x, integers above 2^32 - 1 handed over as bigints (cbor-x writes numbers there
 * as floats). The reference for the bytes on the wire.
 */
function cborXFlow(r: FlowRecord): Uint8Array {
  const int = (n: number | bigint) =>
    typeof n === "number"
      ? (n > 0xffff_ffff ? BigInt(n) : n)
      : (n >= -0x8000_0000n && n <= 0xffff_ffffn ? Number(n) : n);
  const state = CODES.closeState.indexOf(r.closeState);
  const values: unknown[] = [
    r.localIp,
    r.localWorkloadId,
    int(r.tStartNs),
    int(r.tEndNs),
    r.family,
    r.localPort,
    r.remoteIp,
    r.remotePort,
    CODES.identitySource.indexOf(r.identitySource),
    r.seeded,
    CODES.direction.indexOf(r.direction),
    state < 0 ? r.closeState : state,
    CODES.end.indexOf(r.end),
    r.error,
    int(r.bytesSent),
    int(r.bytesAcked),
    int(r.bytesReceived),
    r.segsOut,
    r.segsIn,
    r.totalRetrans,
    r.srttUs,
    r.minRttUs,
    r.delivered,
    r.lost,
    encodeFlowId(r.bootId, r.cookie),
    int(r.bytesRetrans),
    CODES.recordKind.indexOf(r.recordKind),
  ];
  return new Uint8Array(rawCbor.encoder.encode(new Map(values.map((v, key) => [key, v]))));
}

/** A deterministic pseudo-random generator (mulberry32): integers below `n`. */
function randomInts(seed: number): (n: number) => number {
  let a = seed;
  return (n) => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) % n);
  };
}

const WORKLOAD_IDS = [
  "",
  "a",
  "x".repeat(23), // the longest text with a 1-byte head
  "x".repeat(24),
  "k8s://payments/api-7d9f8c6b5-x2x9z#main",
  "x".repeat(63), // cbor-x writes text below 64 UTF-16 units with its own UTF-8 encoder
  "x".repeat(64), // and longer text with the runtime's
  "x".repeat(127), // the kernel's longest workload ID
  "é",
  "日本",
  "😀",
  "k8s://ns/pod-ünïcödé-" + "ß".repeat(20), // ASCII first, then 2-byte characters
  "é".repeat(63) + "a", // 127 bytes in 64 units
  "日".repeat(42) + "a", // 127 bytes in 43 units
  "😀".repeat(31) + "abc", // 127 bytes, 31 surrogate pairs
  "x".repeat(255),
  "x".repeat(256), // a 3-byte head
  "é".repeat(200),
  // Not all ASCII: the head is reserved for 3 bytes per unit, then shrunk to the bytes written.
  "é" + "x".repeat(9), // 2 reserved, 1 written
  "é" + "x".repeat(99), // 3 reserved, 2 written
  "é" + "x".repeat(29_999), // 5 reserved, 3 written; larger than encodeFlow's pool
  "日".repeat(30_000), // 5 reserved and written
];
const CLOSE_STATES = [...TCP_STATES, "STATE_14", "s".repeat(30), "ÉTAT"];
const TIMES = [
  0n,
  23n,
  24n,
  0xffff_ffffn,
  0x1_0000_0000n,
  1_767_225_600_123_456_789n,
  (1n << 63n) - 1n,
];
/** A socket cookie is a full u64. */
const COOKIES = [...TIMES, 1n << 63n, (1n << 64n) - 1n];
const UINT32S = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 0xffff_ffff];
const UINT53S = [...UINT32S, 0x1_0000_0000, 1_234_567_890_123, Number.MAX_SAFE_INTEGER];
const PORTS = [0, 23, 24, 255, 256, 443, 65_535];

/** `count` flows with every field drawn from the edge values above, IPs sometimes views. */
function variedFlows(count: number, seed = 1): FlowRecord[] {
  const next = randomInts(seed);
  const pick = <T>(values: readonly T[]): T => values[next(values.length)];
  const pool = new Uint8Array(4096);
  const ip = (length: number) => {
    const bytes = Uint8Array.from({ length }, () => next(256));
    if (next(2) === 0) return bytes;
    const at = next(pool.length - length); // a view into a larger buffer, as lib/decode.ts makes
    pool.set(bytes, at);
    return pool.subarray(at, at + length);
  };
  return Array.from({ length: count }, () => {
    const family = pick([4, 6] as const);
    const [tStartNs, tEndNs] = [pick(TIMES), pick(TIMES)].sort((a, b) => a < b ? -1 : 1);
    const end = pick(CODES.end) as FlowRecord["end"];
    return {
      bootId: ip(16),
      cookie: pick(COOKIES),
      family,
      localIp: ip(family === 4 ? 4 : 16),
      localPort: pick(PORTS),
      remoteIp: ip(family === 4 ? 4 : 16),
      remotePort: pick(PORTS),
      localWorkloadId: pick(WORKLOAD_IDS),
      identitySource: pick(CODES.identitySource) as FlowRecord["identitySource"],
      tStartNs,
      tEndNs,
      recordKind: end === "open" ? "interim" : "final",
      seeded: next(2) === 1,
      direction: pick(CODES.direction) as FlowRecord["direction"],
      closeState: pick(CLOSE_STATES),
      end,
      error: pick(UINT32S),
      bytesSent: pick(UINT53S),
      bytesRetrans: pick(UINT53S),
      bytesAcked: pick(UINT53S),
      bytesReceived: pick(UINT53S),
      segsOut: pick(UINT32S),
      segsIn: pick(UINT32S),
      totalRetrans: pick(UINT32S),
      srttUs: pick(UINT32S),
      minRttUs: pick(UINT32S),
      delivered: pick(UINT32S),
      lost: pick(UINT32S),
    };
  });
}

Deno.test("encodeFlow() writes the same bytes as cbor-x did, for every edge value", async (t) => {
  const records = [
    ...variedFlows(3000),
    ...Array.from({ length: 200 }, (_, i) => syntheticFlow(i)),
  ];
  await t.step("every field's edge values occur", () => {
    for (const value of WORKLOAD_IDS) assert.ok(records.some((r) => r.localWorkloadId === value));
    for (const value of CLOSE_STATES) assert.ok(records.some((r) => r.closeState === value));
    for (const value of TIMES) assert.ok(records.some((r) => r.tEndNs === value));
    for (const value of UINT53S) assert.ok(records.some((r) => r.bytesReceived === value));
    for (const value of UINT53S) assert.ok(records.some((r) => r.bytesRetrans === value));
    for (const value of COOKIES) assert.ok(records.some((r) => r.cookie === value));
    for (const value of CODES.end) assert.ok(records.some((r) => r.end === value));
  });
  await t.step("encodeFlow() output equals cbor-x's, and stays so", () => {
    const encoded = records.map(encodeFlow);
    records.forEach((r, i) => assert.deepEqual(encoded[i], cborXFlow(r), `flow ${i}`));
    records.forEach((r, i) => assert.deepEqual(encoded[i], cborXFlow(r), `flow ${i}, later`));
  });
  await t.step("encodeFlowInto() writes the same bytes, only where told", () => {
    const buffer = new Uint8Array(records.reduce((n, r) => n + maxFlowBytes(r), 0) + 14);
    buffer.fill(0xaa);
    let offset = 7;
    for (const [i, r] of records.entries()) {
      const end = encodeFlowInto(r, buffer, offset);
      assert.deepEqual(buffer.slice(offset, end), cborXFlow(r), `flow ${i}`);
      assert.ok(end - offset <= maxFlowBytes(r), `flow ${i}: ${end - offset} bytes`);
      offset = end;
    }
    assert.ok(buffer.subarray(0, 7).every((b) => b === 0xaa), "nothing written before");
    assert.ok(buffer.subarray(offset).every((b) => b === 0xaa), "nothing written after");
  });
  await t.step("decodeBatch() returns the flows", () => {
    assert.deepEqual(decodeBatch(batchOf(records)).flows, records);
  });
});

Deno.test("encodeFlowInto() refuses a buffer without room for the worst case", () => {
  const record = syntheticFlow(1);
  const buffer = new Uint8Array(maxFlowBytes(record) + 9);
  assert.throws(() => encodeFlowInto(record, buffer, 10), {
    name: "RangeError",
    message: `Cannot encode a flow at offset 10 of a ${buffer.length}-byte buffer: it needs up to ${
      maxFlowBytes(record)
    } bytes from there (make room with maxFlowBytes())`,
  });
  assert.ok(buffer.every((b) => b === 0), "nothing written");
  assert.deepEqual(buffer.slice(9, encodeFlowInto(record, buffer, 9)), cborXFlow(record));
});

Deno.test("encodeFlow() refuses every out-of-range field, naming it", () => {
  const base = syntheticFlow(1);
  const cases: [keyof FlowRecord, string, unknown[]][] = [
    ["family", "family", [5, "4", undefined]],
    ["localIp", "local_ip", [new Uint8Array(5), new Uint8Array(16), [10, 0, 0, 1], "10.0.0.1"]],
    ["remoteIp", "remote_ip", [new Uint8Array(0), new Uint16Array(4), null]],
    ["localPort", "local_port", [-1, 65_536, 1.5, NaN, "80", 70_000n]],
    ["remotePort", "remote_port", [-1, 65_536, Infinity]],
    ["localWorkloadId", "local_workload_id", [5, undefined, null]],
    ["identitySource", "identity_source", ["dns", undefined]],
    ["tStartNs", "t_start_ns", [-1n, 1n << 64n, -1, 1.5, "1", undefined]],
    ["tEndNs", "t_end_ns", [-1n, 1n << 64n]],
    ["seeded", "seeded", [1, "true", undefined]],
    ["direction", "direction", ["sideways", 1]],
    ["closeState", "close_state", ["", 7, undefined]],
    ["end", "end", ["crash", 0, "open"]],
    ["recordKind", "record_kind", ["closed", 1, undefined]],
    ["error", "error", [-1, 2 ** 32, 0.5, 1n << 32n]],
    ["bytesSent", "bytes_sent", [-1, 2 ** 53, 1.5, Infinity, 1n << 53n]],
    ["bytesAcked", "bytes_acked", [-1, 2 ** 53]],
    ["bytesReceived", "bytes_received", [-0.5, 2 ** 60]],
    ["segsOut", "segs_out", [-1, 2 ** 32]],
    ["segsIn", "segs_in", [-1, 2 ** 32]],
    ["totalRetrans", "total_retrans", [-1, 2 ** 32]],
    ["srttUs", "srtt_us", [-1, 2 ** 32]],
    ["minRttUs", "min_rtt_us", [-1, 2 ** 32]],
    ["delivered", "delivered", [-1, 2 ** 32]],
    ["lost", "lost", [-1, 2 ** 32, "0"]],
    ["bootId", "flow_id", [new Uint8Array(15), NO_BOOT_ID, new Uint8Array(24), "x", undefined]],
    ["cookie", "flow_id", [-1n, 1n << 64n, -1, 1.5, "1", undefined]],
    ["bytesRetrans", "bytes_retrans", [-1, 2 ** 53, 0.5, undefined]],
  ];
  for (const [field, name, values] of cases) {
    for (const value of values) {
      const record = { ...base, [field]: value } as FlowRecord;
      assert.throws(() => encodeFlow(record), (error: unknown) => {
        assert.ok(error instanceof WireFormatError, `${field}: ${String(value)}`);
        assert.ok(error.message.startsWith(`Flow: ${name} `), error.message);
        return true;
      });
    }
  }
});

Deno.test("a flow with bigint counters or number times is written as if typed as declared", () => {
  const declared: FlowRecord = { ...syntheticFlow(5), tStartNs: 7n, bytesSent: 2 ** 40 };
  const loose = {
    ...declared,
    cookie: 9,
    tStartNs: 7,
    tEndNs: Number(declared.tEndNs),
    bytesSent: 2n ** 40n,
    bytesAcked: BigInt(declared.bytesAcked),
  } as unknown as FlowRecord;
  assert.deepEqual(
    encodeFlow(loose),
    cborXFlow({ ...loose, cookie: 9n }),
    "what cbor-x wrote for these",
  );
  const uint32s = { ...declared, localPort: 443n, error: 0n, lost: 3n } as unknown as FlowRecord;
  assert.deepEqual(
    encodeFlow(uint32s),
    cborXFlow({ ...declared, localPort: 443, error: 0, lost: 3 }),
    "the shortest form, where cbor-x wrote these bigints in 8 bytes",
  );
});

Deno.test("encodeFlow() writes a lone surrogate as U+FFFD, so the text is valid UTF-8", () => {
  // cbor-x wrote it as an invalid 3-byte sequence in text of fewer than 64 UTF-16 units.
  const record = { ...syntheticFlow(1), localWorkloadId: "pod-\ud800" };
  const bytes = encodeFlow(record);
  const text = new TextEncoder().encode("pod-\ufffd");
  assert.ok(
    bytes.some((_, i) => text.every((b, j) => bytes[i + j] === b)),
    "the replacement character",
  );
  assert.equal(decodeBatch(batchOf([record])).flows[0].localWorkloadId, "pod-\ufffd");
});

/** Runs `decode` and returns its time, ms, and how much the resident set grew, MiB. */
/**
 * The CPU time `decode` took on this thread, ms (10 ms steps), and how the resident set grew.
 * CPU time, not wall time: on a busy machine (make test runs files in parallel) a decode that
 * waits for a core would pass a wall-clock bound, and bounds here are about work done.
 */
function measured(decode: () => void): { ms: number; rssGrowthMiB: number } {
  const rss = Deno.memoryUsage().rss;
  const start = threadCpuMs();
  decode();
  return {
    ms: threadCpuMs() - start,
    rssGrowthMiB: (Deno.memoryUsage().rss - rss) / 2 ** 20,
  };
}

/** User plus system time of the calling thread, ms, from /proc (clock ticks of 10 ms). */
function threadCpuMs(): number {
  const stat = Deno.readTextFileSync("/proc/thread-self/stat");
  // Fields after "pid (comm) ": state is the first, utime the 12th, stime the 13th.
  const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

Deno.test("decodeBatch() refuses a 25-byte body declaring a 107.6 million-entry array at once", () => {
  // Before: cbor-x allocated the whole array first; 19 s and 2 GB of RSS, then "truncated".
  for (
    const [prefix, message] of [
      [
        [0xa1, 0x09, 0x9a], // {9: [107 600 000 entries…]}
        "Cannot decode batch: truncated CBOR (the array at byte 2 declares 107600000 entries, but 18 bytes follow)",
      ],
      [[0x9a], "Batch: the batch must be a map, got array"], // [107 600 000 entries…]
    ] as const
  ) {
    const body = new Uint8Array(25);
    body.set(prefix);
    new DataView(body.buffer).setUint32(prefix.length, 107_600_000);
    const { ms, rssGrowthMiB } = measured(() => rejects(body, message));
    assert.ok(ms < 100, `refused in ${ms} ms of CPU time`);
    assert.ok(rssGrowthMiB < 16, `the resident set grew by ${rssGrowthMiB} MiB`);
  }
});

Deno.test("decodeBatch() refuses 64 MiB of empty maps (a 65 KB gzip body) before building any", () => {
  // Before: cbor-x built the maps one by one until V8 ran out of memory (4.4 GB, 100 s).
  const raw = new Uint8Array(64 * 1024 * 1024); // under both of the collector's size limits
  raw.set([0xa1, 0x09, 0x9a]); // {9: [67 108 857 × {}]}
  new DataView(raw.buffer).setUint32(3, raw.length - 7);
  raw.fill(0xa0, 7);
  const gzipped = gzipSync(raw, { level: 9 });
  assert.ok(gzipped.length < 70_000, `${gzipped.length} bytes on the wire`);
  const body = new Uint8Array(gunzipSync(gzipped));
  const { ms, rssGrowthMiB } = measured(() =>
    rejects(
      body,
      "Batch: flows declares 67108857 entries, but the 67108857 bytes that follow hold 1157049 flows at most (58 bytes each at least)",
    )
  );
  assert.ok(ms < 100, `refused in ${ms} ms of CPU time`);
  assert.ok(rssGrowthMiB < 16, `the resident set grew by ${rssGrowthMiB} MiB`);
});

Deno.test("decodeBatch() walks 64 MiB of items anywhere else without building them", async (t) => {
  const huge = (fill: (body: Uint8Array) => void) => {
    const body = new Uint8Array(64 * 1024 * 1024);
    fill(body);
    return body;
  };
  const cases: [string, Uint8Array, string][] = [
    [
      "an array of 67 million empty maps as the host",
      huge((b) => {
        b.set([0xa1, 0x02, 0x9a]);
        new DataView(b.buffer).setUint32(3, b.length - 7);
        b.fill(0xa0, 7);
      }),
      "Batch: schema_version must be an unsigned integer, got nothing",
    ],
    [
      "arrays nested 67 million deep",
      huge((b) => {
        b.set([0xa1, 0x02]);
        b.fill(0x81, 2); // [[[[…]]]]
        b[b.length - 1] = 0;
      }),
      "Batch: schema_version must be an unsigned integer, got nothing",
    ],
    [
      "a map of 33 million unknown keys",
      huge((b) => {
        b.set([0xba]);
        new DataView(b.buffer).setUint32(1, (b.length - 6) / 2);
        for (let i = 5; i < b.length - 1; i += 2) b[i] = 0x60; // "" => 0
      }),
      "Cannot decode batch: invalid CBOR (data after the end of the item at byte 67108863: 1 bytes)",
    ],
  ];
  for (const [name, body, message] of cases) {
    await t.step(name, () => {
      const { ms, rssGrowthMiB } = measured(() => rejects(body, message));
      assert.ok(ms < 2000, `refused in ${ms} ms of CPU time`);
      assert.ok(rssGrowthMiB < 16, `the resident set grew by ${rssGrowthMiB} MiB`);
    });
  }
});

Deno.test("decodeBatch() refuses declared lengths longer than the bytes left", () => {
  const good = batchOf([syntheticFlow(1)]);
  const top = rawCbor.decoder.decode(good) as Map<number, unknown>;
  const at = (needle: number[]) => {
    for (let i = 0; i < good.length; i++) {
      if (needle.every((b, j) => good[i + j] === b)) return i;
    }
    throw new Error(`no ${needle}`);
  };
  // The hostname "node-1.example" (14 bytes) claims 4 GiB.
  const text = good.slice();
  const hostAt = at([0x6e, ...new TextEncoder().encode("node-1")]);
  text.set([0x7a, 0xff, 0xff, 0xff, 0xff], hostAt);
  rejects(
    text,
    `Cannot decode batch: truncated CBOR (the text string at byte ${hostAt} declares 4294967295 bytes, but ${
      good.length - hostAt - 5
    } bytes follow)`,
  );
  // A flow's map claims 2^32 - 1 entries.
  const flowAt = at([0xb8, 27]);
  const map = new Uint8Array([...good.subarray(0, flowAt), 0xba, 0xff, 0xff, 0xff, 0xff]);
  rejects(
    map,
    `Batch: flows declares 1 entries, but the 5 bytes that follow hold 0 flows at most (${MIN_FLOW_BYTES} bytes each at least)`,
  );
  // An 8-byte length.
  rejects(
    Uint8Array.of(0xa1, 0x01, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    "Cannot decode batch: truncated CBOR (the byte string at byte 2 declares 18446744073709552000 bytes, but 0 bytes follow)",
  );
  assert.equal(top.size, 10);
});

Deno.test("decodeBatch() refuses what the schema leaves out: tags, indefinite lengths, repeated keys", () => {
  const good = batchOf([syntheticFlow(1)]);
  const replaceFirst = (from: number[], to: number[]) => {
    for (let i = 0; i < good.length; i++) {
      if (from.every((b, j) => good[i + j] === b)) {
        return {
          at: i,
          bytes: Uint8Array.of(...good.subarray(0, i), ...to, ...good.subarray(i + from.length)),
        };
      }
    }
    throw new Error(`no ${from}`);
  };
  const ip = replaceFirst([0x00, 0x44], [0x00, 0xd8, 0x40, 0x44]); // tag 64 on local_ip
  rejects(
    ip.bytes,
    `Cannot decode batch: invalid CBOR (tag at byte ${ip.at + 1}: batches use no tags)`,
  );
  rejects(
    Uint8Array.of(0xbf, 0x00, 0x03, 0xff), // {_ 0: 3}
    "Cannot decode batch: invalid CBOR (indefinite-length map at byte 0: batches use definite lengths)",
  );
  rejects(
    Uint8Array.of(0xa2, 0x00, 0x03, 0x00, 0x03),
    "Batch: key 0 (schema_version) appears twice",
  );
  const repeated = replaceFirst([0x18, 0x19], [0x18, 0x17]); // key 25 written as a second 23
  rejects(repeated.bytes, "Flow 0: key 23 (lost) appears twice");
  const utf8 = replaceFirst([...new TextEncoder().encode("node-1")], [
    0xc3,
    0x28,
    0x2d,
    0x31,
    0x2e,
    0x65,
  ]);
  rejects(
    utf8.bytes,
    `Cannot decode batch: invalid CBOR (text string at byte ${utf8.at - 1} is not valid UTF-8)`,
  );
  rejects(
    Uint8Array.of(0xa1, 0x00, 0xf0), // simple value 16
    "Cannot decode batch: invalid CBOR (simple value 16 at byte 2)",
  );
  rejects(
    Uint8Array.of(0xa1, 0x00, 0xff),
    "Cannot decode batch: invalid CBOR (break at byte 2 outside an indefinite-length item)",
  );
});

Deno.test("batchDecoder() refuses more flows than maxRecords before reading them", () => {
  const body = batchOf([syntheticFlow(1), syntheticFlow(2), syntheticFlow(3)]);
  assert.equal(batchDecoder({ maxRecords: 3 })(body).flows.length, 3);
  assert.throws(() => batchDecoder({ maxRecords: 2 })(body), (error: unknown) => {
    assert.ok(error instanceof WireLimitError && error instanceof WireFormatError);
    assert.equal(error.name, "WireLimitError");
    assert.equal(error.message, "Batch of 3 flows exceeds the limit of 2 flows per batch");
    return true;
  });
});

Deno.test("MIN_FLOW_BYTES is the size of the smallest flow any version allows", () => {
  const smallest = new Map<number, unknown>([
    [0, new Uint8Array(4)],
    [1, ""],
    [4, 4],
    [6, new Uint8Array(4)],
  ]);
  for (let key = 0; key < 24; key++) {
    if (!smallest.has(key)) smallest.set(key, key === 9 ? false : 0);
  }
  const sorted = new Map([...smallest].sort(([a], [b]) => a - b));
  const flow = new Uint8Array(rawCbor.encoder.encode(sorted));
  assert.equal(flow.length, MIN_FLOW_BYTES);
  const top = rawCbor.decoder.decode(batchOf([syntheticFlow(1)])) as Map<number, unknown>;
  top.set(0, 1);
  top.set(9, [sorted, sorted]);
  top.set(6, 2);
  const body = new Uint8Array(rawCbor.encoder.encode(top));
  assert.equal(decodeBatch(body).flows.length, 2, "two flows of MIN_FLOW_BYTES fit");
  rejects(
    body.subarray(0, body.length - 1),
    `Batch: flows declares 2 entries, but the ${
      2 * MIN_FLOW_BYTES - 1
    } bytes that follow hold 1 flows at most (${MIN_FLOW_BYTES} bytes each at least)`,
  );
});

Deno.test("encodeBatchHead() writes the bytes cbor-x wrote for the batch head, edge values included", () => {
  const int = (n: number | bigint) =>
    typeof n === "number"
      ? (n > 0xffff_ffff ? BigInt(n) : n)
      : (n >= -0x8000_0000n && n <= 0xffff_ffffn ? Number(n) : n);
  const cborX = (h: BatchHeader) => {
    const host = new Map<number, unknown>([[0, h.host.hostname], [1, h.host.workloadId]]);
    if (h.host.instanceId !== undefined) host.set(2, h.host.instanceId);
    const map = rawCbor.encoder.encode(
      new Map<number, unknown>([
        [0, h.schemaVersion],
        [1, h.exporterVersion],
        [2, host],
        [3, int(h.sequence)],
        [4, int(h.windowStartNs)],
        [5, int(h.windowEndNs)],
        [6, int(h.recordCount)],
        [7, int(h.clockOffsetNs)],
        [
          8,
          new Map([[0, int(h.loss.kernelDrops)], [1, int(h.loss.recursionMisses)], [
            2,
            int(h.loss.spoolEvictions),
          ]]),
        ],
        [9, []],
      ]),
    );
    // The flow array's head for recordCount flows instead of the empty array.
    const body = new Uint8Array(map.subarray(0, map.length - 1));
    return [...body, ...encodeBatch(h, []).subarray(body.length)];
  };
  const cases: BatchHeader[] = [
    header(0),
    header(3, { clockOffsetNs: -5n }),
    header(70_000, { clockOffsetNs: -(2n ** 31n) }),
    header(24, { clockOffsetNs: -(2n ** 31n) - 1n, sequence: 2 ** 40 }),
    header(1, { host: { hostname: "höst-ñ", workloadId: "k8s://ns/pod", instanceId: "i-0abc" } }),
    header(2, {
      loss: { kernelDrops: 2n ** 40n, recursionMisses: 7n, spoolEvictions: 2 ** 33 },
      windowStartNs: 0n,
      windowEndNs: 2n ** 63n - 1n,
    }),
  ];
  for (const h of cases) {
    assert.deepEqual(
      [...encodeBatchHead(h, 0)],
      cborX(h),
      JSON.stringify(h, (_, v) => typeof v === "bigint" ? `${v}` : v),
    );
  }
});
