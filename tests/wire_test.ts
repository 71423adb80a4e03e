import assert from "node:assert/strict";
import { Decoder, Encoder } from "cbor-x";
import type { FlowRecord } from "../lib/flow.ts";
import { syntheticFlow } from "../lib/_synthetic_flows.ts";
import { TCP_STATES } from "../lib/decode.ts";
import {
  type BatchHeader,
  decodeBatch,
  encodeBatch,
  encodeFlow,
  idempotencyKey,
  SCHEMA_VERSION,
  WireFormatError,
} from "../lib/wire.ts";

const raw = {
  encoder: new Encoder(
    {
      useRecords: false,
      mapsAsObjects: false,
      useTag259ForMaps: false,
      tagUint8Array: false,
    } as ConstructorParameters<typeof Encoder>[0],
  ),
  decoder: new Decoder({ useRecords: false, mapsAsObjects: false }),
};

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
    loss: { kernelDrops: 3n, recursionMisses: 18_446_744_073_709_551_615n, spoolEvictions: 2 },
    ...extra,
  };
}

function batchOf(records: FlowRecord[], extra: Partial<BatchHeader> = {}): Uint8Array {
  return encodeBatch(header(records.length, extra), records.map(encodeFlow));
}

/** Re-encodes a valid batch after `mutate` changed its raw CBOR maps. */
function tampered(mutate: (top: Map<number, unknown>, flows: Map<number, unknown>[]) => void) {
  const top = raw.decoder.decode(batchOf([syntheticFlow(1), syntheticFlow(2)])) as Map<
    number,
    unknown
  >;
  mutate(top, top.get(9) as Map<number, unknown>[]);
  return new Uint8Array(raw.encoder.encode(top));
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
    family: 4,
    localIp: Uint8Array.of(10, 1, 2, 3),
    localPort: 8080,
    remoteIp: Uint8Array.of(192, 0, 2, 200),
    remotePort: 51234,
    localWorkloadId: "k8s://payments/api-7d9f8c6b5-x2x9z#main",
    identitySource: "port-map",
    tStartNs: 1_767_225_601_000_000_001n,
    tEndNs: 18_446_744_073_709_551_615n,
    seeded: true,
    direction: "inbound",
    closeState: "LAST_ACK",
    end: "normal",
    error: 0,
    bytesSent: 9_007_199_254_740_991,
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
  };
  const decoded = decodeBatch(batchOf([v4, v6]));
  assert.deepEqual(decoded, { header: header(2), flows: [v4, v6] });
  assert.equal(Object.getPrototypeOf(decoded.flows[1].localIp), Uint8Array.prototype);
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
  const flow = raw.decoder.decode(flowBytes) as Map<number, unknown>;
  assert.deepEqual([...flow.keys()], Array.from({ length: 24 }, (_, i) => i));
  assert.deepEqual([...(flow.get(0) as Uint8Array)], [...record.localIp]);
  assert.equal(flow.get(1), record.localWorkloadId);
  assert.equal(flow.get(2), record.tStartNs);
  assert.equal(flow.get(3), record.tEndNs);
  assert.equal(flowBytes[0], 0xb8, "a map of 24 entries");
  assert.deepEqual([...flowBytes.subarray(2, 4)], [0x00, 0x44], "key 0, a 4-byte byte string");
  const top = raw.decoder.decode(batchOf([record])) as Map<number, unknown>;
  assert.deepEqual([...top.keys()], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.ok(flowBytes.length < 150, `an IPv4 flow takes ${flowBytes.length} bytes`);
});

Deno.test("decodeBatch() rejects truncated CBOR and trailing bytes", () => {
  const body = batchOf([syntheticFlow(1), syntheticFlow(2)]);
  for (const end of [1, 10, body.length / 2, body.length - 1].map(Math.floor)) {
    rejects(
      body.subarray(0, end),
      `Cannot decode batch: truncated CBOR (${end} bytes end inside a data item)`,
    );
  }
  assert.throws(
    () => decodeBatch(Uint8Array.of(...body, 0)),
    /^WireFormatError: Cannot decode batch: invalid CBOR \(Data read, but end of buffer not reached\)$/,
  );
});

Deno.test("decodeBatch() rejects a schema version it does not read", () => {
  rejects(
    tampered((top) => top.set(0, 7)),
    "Unsupported schema version 7 (this collector reads 1)",
  );
  rejects(
    tampered((top) => top.set(0, "1")),
    'Batch: schema_version must be an unsigned integer, got text string "1"',
  );
  rejects(new Uint8Array(raw.encoder.encode([1, 2])), "Batch: the batch must be a map, got array");
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
    ["Flow 0: t_end_ns must be an unsigned 64-bit integer, got -1", (_, f) => f[0].set(3, -1)],
    ["Flow 0: seeded must be a boolean, got 1", (_, f) => f[0].set(9, 1)],
    ["Flow 0: end must be an integer from 0 to 5, got 6", (_, f) => f[0].set(12, 6)],
    ["Flow 0: close_state must be an integer from 0 to 13, got 14", (_, f) => f[0].set(11, 14)],
    ["Flow 0: family must be 4 or 6, got 5", (_, f) => f[0].set(4, 5)],
    [
      "Flow 0: srtt_us must be an unsigned integer up to 4294967295, got 1.5",
      (_, f) => f[0].set(20, 1.5),
    ],
    ["Flow 1: missing lost (key 23)", (_, f) => f[1].delete(23)],
    ["Flow 1: unknown key 24", (_, f) => f[1].set(24, 0)],
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
    message: "Cannot encode schema version 2 (this exporter writes 1)",
  });
});

Deno.test("idempotencyKey() joins hostname and sequence", () => {
  assert.equal(idempotencyKey("node-1", 42), "node-1:42");
});
