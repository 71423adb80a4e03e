/**
 * The kernel record's straight path to the wire (RecordWriter) against the path through a
 * decoded record (decodeFlow, then encodeFlowInto): byte for byte the same flow, or the same
 * error, for realistic records and for records with every field drawn at random.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeFlow, RECORD_SIZE } from "../lib/decode.ts";
import { encodeFlowInto, RecordWriter } from "../lib/wire.ts";
import { arbitraryRawRecord, rawRecord, WALL_OFFSET_NS } from "./_raw_records.ts";

const BOOT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

/** Both paths' outcome: the flow's bytes, or the error's class and message. */
function outcomes(records: Uint8Array, at: number, clockOffsetNs: bigint) {
  const run = (encode: (target: Uint8Array) => number) => {
    const target = new Uint8Array(2048);
    try {
      return { bytes: target.slice(0, encode(target)) };
    } catch (error) {
      return { error: `${(error as Error).name}: ${(error as Error).message}` };
    }
  };
  const writer = new RecordWriter(records, clockOffsetNs, BOOT_ID);
  writer.at = at;
  return {
    direct: run((target) => writer.write(target, 0)),
    decoded: run((target) =>
      encodeFlowInto(decodeFlow(records, at, clockOffsetNs, BOOT_ID), target, 0)
    ),
  };
}

Deno.test("realistic records: the straight path writes what the decoded path writes", () => {
  const records = [
    rawRecord(),
    rawRecord({ family: 6, local: [0x20, 1, 0xd, 0xb8, ...new Array(11).fill(0), 1] }),
    rawRecord({ workload: "k8s://payments/api-7d9f", identitySource: 2, closeState: 6 }),
    rawRecord({ workload: "x".repeat(128), error: 104, closeState: 1 }),
    rawRecord({ workload: "naïve-ü", direction: 2 }), // not ASCII: decoded path
    rawRecord({ bytesSent: 2n ** 60n }), // past 2^53: the decoded path's error
    rawRecord({ closeState: 99, identitySource: 77, direction: 9, flags: 3 }),
    rawRecord({ family: 5 as 4 }), // the decoder's error
    rawRecord({ localPort: 0, remotePort: 65535, cookie: 2n ** 64n - 1n }),
    rawRecord({ tStartNs: 5_000n, tEndNs: 4_999n }), // ends before it starts: refused
    rawRecord({ flags: 4, closeState: 1 }), // interim: end open, record_kind interim
    rawRecord({ flags: 5, closeState: 8, error: 104, family: 6 }),
  ];
  const joined = new Uint8Array(records.length * RECORD_SIZE);
  records.forEach((r, i) => joined.set(r, i * RECORD_SIZE));
  for (let i = 0; i < records.length; i++) {
    const { direct, decoded } = outcomes(joined, i * RECORD_SIZE, WALL_OFFSET_NS);
    assert.deepEqual(direct, decoded, `record ${i}`);
  }
  // Both wrote a flow for the realistic ones, and both refused the two invalid ones.
  const refused = records.map((_, i) =>
    "error" in outcomes(joined, i * RECORD_SIZE, WALL_OFFSET_NS).direct
  );
  assert.deepEqual(refused, [
    false,
    false,
    false,
    false,
    false,
    true,
    false,
    true,
    false,
    true,
    false,
    false,
  ]);
});

Deno.test("random records: the straight path writes what the decoded path writes", () => {
  fc.assert(
    fc.property(arbitraryRawRecord(), ({ record, clockOffsetNs }) => {
      const { direct, decoded } = outcomes(record, 0, clockOffsetNs);
      assert.deepEqual(direct, decoded);
    }),
    { seed: 20261130, numRuns: 3000 },
  );
});
