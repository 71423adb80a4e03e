/**
 * The JSON lines written straight from kernel records (RecordJsonWriter) against the lines of
 * the decoded records (decodeFlow, then formatFlowJson): the same bytes, or the same error, for
 * realistic records and for records with every field drawn at random.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeFlow, RECORD_SIZE } from "../lib/decode.ts";
import { formatFlowJson, RecordJsonWriter } from "../lib/json_lines.ts";
import { arbitraryRawRecord, rawRecord, v4Mapped, WALL_OFFSET_NS } from "./_raw_records.ts";

const BOOT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0x30 + i);
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
    rawRecord({ flags: 4, closeState: 1 }), // interim: end open, no close_seen_by
    rawRecord({ flags: 7, closeState: 8, family: 6 }),
  ];
  const joined = new Uint8Array(records.length * RECORD_SIZE);
  records.forEach((r, i) => joined.set(r, i * RECORD_SIZE));
  for (let i = 0; i < records.length; i++) {
    const { direct, decoded } = outcomes(joined, i * RECORD_SIZE, WALL_OFFSET_NS);
    assert.deepEqual(direct, decoded, `record ${i}`);
  }
});

Deno.test("random records: the straight JSON line is the decoded record's line", () => {
  fc.assert(
    fc.property(arbitraryRawRecord(), ({ record, clockOffsetNs }) => {
      const { direct, decoded } = outcomes(record, 0, clockOffsetNs);
      assert.deepEqual(direct, decoded);
    }),
    { seed: 20261130, numRuns: 3000 },
  );
});

Deno.test("records in time order through one writer: every line is the decoded record's line", () => {
  // The writer keeps the digits of the last second it wrote: times that step forward within a
  // second, across seconds, across a wrap of the low 32 bits, and back.
  const step = fc.oneof(
    fc.bigInt({ min: 0n, max: 1_000_000n }),
    fc.bigInt({ min: 0n, max: 5_000_000_000n }),
    fc.bigInt({ min: -2_000_000_000n, max: 0n }),
  );
  fc.assert(
    fc.property(
      fc.bigInt({ min: 0n, max: 2n ** 42n }),
      fc.array(step, { minLength: 1, maxLength: 40 }),
      fc.constantFrom(WALL_OFFSET_NS, 0n, 2n ** 32n - 1n, -(2n ** 31n)),
      (first, steps, clockOffsetNs) => {
        const records = new Uint8Array(steps.length * RECORD_SIZE);
        let end = first;
        steps.forEach((s, i) => {
          end = end + s > 0n ? end + s : 0n;
          const tStartNs = end - (end % 3_000_000n);
          records.set(rawRecord({ tStartNs, tEndNs: end, cookie: BigInt(i + 1) }), i * RECORD_SIZE);
        });
        const writer = new RecordJsonWriter(records, clockOffsetNs, BOOT_ID);
        const target = new Uint8Array(RecordJsonWriter.ROOM);
        for (let i = 0; i < steps.length; i++) {
          writer.at = i * RECORD_SIZE;
          const direct = decoder.decode(target.subarray(0, writer.write(target, 0)));
          const decoded = formatFlowJson(
            decodeFlow(records, i * RECORD_SIZE, clockOffsetNs, BOOT_ID),
          );
          assert.equal(direct, decoded + "\n", `record ${i}`);
        }
      },
    ),
    { seed: 20261130, numRuns: 1000 },
  );
});
