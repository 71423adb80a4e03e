/**
 * The JSON lines written straight from kernel records (RecordJsonWriter) against the lines of
 * the decoded records (decodeFlow, then formatFlowJson): the same bytes, or the same error, for
 * realistic records and for records with every field drawn at random.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeFlow, RECORD_OFFSETS as AT, RECORD_SIZE } from "../lib/decode.ts";
import { formatFlowJson, RecordJsonWriter } from "../lib/json_lines.ts";
import { rawRecord, v4Mapped } from "./_raw_records.ts";

const BOOT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0x30 + i);
const WALL_OFFSET_NS = 1_767_225_600_000_000_000n;
const decoder = new TextDecoder();

/** Both paths' outcome: the line, or the error's class and message. */
function outcomes(records: Uint8Array, at: number, clockOffsetNs: bigint) {
  const run = (line: () => string) => {
    try {
      return { line: line() };
    } catch (error) {
      return { error: `${(error as Error).name}: ${(error as Error).message}` };
    }
  };
  const writer = new RecordJsonWriter(records, clockOffsetNs, BOOT_ID);
  writer.at = at;
  const target = new Uint8Array(RecordJsonWriter.ROOM + 10);
  return {
    direct: run(() => decoder.decode(target.subarray(5, writer.write(target, 5)))),
    decoded: run(() => formatFlowJson(decodeFlow(records, at, clockOffsetNs, BOOT_ID)) + "\n"),
  };
}

Deno.test("realistic records: the straight JSON line is the decoded record's line", () => {
  const records = [
    rawRecord(),
    rawRecord({ family: 6, local: [0x20, 1, 0xd, 0xb8, ...new Array(11).fill(0), 1] }),
    rawRecord({ workload: "k8s://payments/api-7d9f", identitySource: 2, closeState: 6 }),
    rawRecord({ workload: "x".repeat(128), error: 104, closeState: 1, flags: 3 }),
    rawRecord({ workload: 'say "hi"\\', direction: 2 }), // escapes: the general path
    rawRecord({ workload: "naïve", closeState: 0 }),
    rawRecord({ bytesSent: 2n ** 60n, cookie: 2n ** 63n }),
    rawRecord({ closeState: 99, identitySource: 77, direction: 9 }),
    rawRecord({ tStartNs: 5_000_000n, tEndNs: 4_000_000n }),
    rawRecord({ family: 5 as 4 }), // the decoder's error
    rawRecord({ local: v4Mapped(0, 0, 0, 0), remote: v4Mapped(255, 255, 255, 255) }),
  ];
  const joined = new Uint8Array(records.length * RECORD_SIZE);
  records.forEach((r, i) => joined.set(r, i * RECORD_SIZE));
  for (let i = 0; i < records.length; i++) {
    const { direct, decoded } = outcomes(joined, i * RECORD_SIZE, WALL_OFFSET_NS);
    assert.deepEqual(direct, decoded, `record ${i}`);
  }
});

Deno.test("random records: the straight JSON line is the decoded record's line", () => {
  const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
  const record = fc.record({
    family: fc.oneof(
      fc.constant(4),
      fc.constant(4),
      fc.constant(6),
      fc.integer({ min: 0, max: 9 }),
    ),
    bytes: fc.uint8Array({ minLength: RECORD_SIZE, maxLength: RECORD_SIZE }),
    workload: fc.oneof(
      fc.constant(""),
      fc.string({ maxLength: 140 }),
      fc.stringMatching(/^[a-z0-9:/._-]{1,128}$/),
    ),
    start: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 50n }), u64),
    length: fc.oneof(fc.bigInt({ min: -(2n ** 40n), max: 2n ** 45n }), u64),
    counters: fc.array(fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 40n }), u64), {
      minLength: 5,
      maxLength: 5,
    }),
    offset: fc.oneof(
      fc.constant(WALL_OFFSET_NS),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    ),
  });
  fc.assert(
    fc.property(record, ({ family, bytes, workload, start, length, counters, offset }) => {
      const raw = bytes.slice();
      const view = new DataView(raw.buffer);
      raw[AT.family] = family;
      raw.fill(0, AT.workload_id, AT.workload_id + 128);
      raw.set(new TextEncoder().encode(workload).subarray(0, 128), AT.workload_id);
      view.setBigUint64(AT.t_start_ns, start, true);
      view.setBigUint64(AT.t_end_ns, BigInt.asUintN(64, start + length), true);
      [AT.bytes_sent, AT.bytes_acked, AT.bytes_received, AT.bytes_retrans, AT.cookie].forEach(
        (field, i) => view.setBigUint64(field, counters[i], true),
      );
      if (family === 4) raw.set(v4Mapped(raw[AT.local_ip + 12], 7, 0, 1), AT.local_ip);
      const { direct, decoded } = outcomes(raw, 0, offset);
      assert.deepEqual(direct, decoded);
    }),
    { seed: 20261130, numRuns: 3000 },
  );
});
