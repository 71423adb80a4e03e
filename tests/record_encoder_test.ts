/**
 * The shim's encoder of kernel records (ffi/record_encoder.ts, `fe_encode_flows`) against
 * lib/wire.ts's RecordWriter: a poll's records come out byte for byte the same, with the same
 * flows dropped for the same errors, for realistic records and for records with every field
 * drawn at random; and the shim does encode (it does not hand every record back).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { RECORD_OFFSETS as AT, RECORD_SIZE } from "../lib/decode.ts";
import { encodeRecords, FlowBuffer } from "../lib/encoded_flows.ts";
import { nativeRunEncoder } from "../ffi/record_encoder.ts";
import { RECORD_ENCODING } from "../lib/wire.ts";
import { arbitraryRawRecord, rawRecord, v4Mapped, WALL_OFFSET_NS } from "./_raw_records.ts";

const BOOT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const native = nativeRunEncoder();

/** One encoder's outcome for a poll: its flows, and the errors of the records it dropped. */
function outcome(records: Uint8Array, clockOffsetNs: bigint, withNative: boolean) {
  const dropped: string[] = [];
  const flows = encodeRecords(
    new FlowBuffer(),
    { records, clockOffsetNs, bootId: BOOT_ID },
    (error) => {
      dropped.push(`${(error as Error).name}: ${(error as Error).message}`);
      return true;
    },
    withNative ? native : undefined,
  );
  return { bytes: flows.bytes.slice(), ends: Array.from(flows.ends), dropped };
}

function joined(records: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(records.length * RECORD_SIZE);
  records.forEach((r, i) => out.set(r, i * RECORD_SIZE));
  return out;
}

/** Realistic records, varied: addresses, ports, workloads, states, errors, interim ones. */
function realistic(count: number): Uint8Array {
  return joined(Array.from({ length: count }, (_, i) =>
    rawRecord({
      family: i % 8 === 7 ? 6 : 4,
      local: i % 8 === 7
        ? [0x20, 1, 0xd, 0xb8, ...new Array(10).fill(0), i >> 8 & 0xff, i & 0xff]
        : v4Mapped(10, 0, i >> 8 & 0xff, i & 0xff),
      localPort: 32768 + i % 28000,
      remotePort: [443, 5432, 8080, 70000 % 65536][i % 4],
      cookie: 40_961n + BigInt(i) * 977n,
      tStartNs: 3_600_000_000_000n + BigInt(i) * 1_000n,
      tEndNs: 3_600_000_000_000n + BigInt(i) * 1_000n + BigInt(i % 5) * 2n ** 33n,
      bytesSent: BigInt(i) * 2_654_435_761n % 2n ** 45n,
      workload: i % 4 === 3 ? "" : `k8s://team-${i % 37}/payments-api-${(i % 997).toString(36)}`,
      identitySource: i % 4,
      direction: i % 3,
      closeState: i % 12,
      error: [0, 0, 0, 104, 111, 110, 32, 5][i % 8],
      flags: [0, 2, 1, 4, 6, 8][i % 6],
    })));
}

Deno.test("realistic records: the shim writes what RecordWriter writes, and takes them all", () => {
  for (const count of [1, 7, 1024, 3000]) { // 3000: the buffer grows past its first size
    const records = realistic(count);
    assert.deepEqual(
      outcome(records, WALL_OFFSET_NS, true),
      outcome(records, WALL_OFFSET_NS, false),
    );
    // The shim encoded every one of them itself, in one run, given room.
    const out = new Uint8Array(count * RECORD_ENCODING.room);
    const ends = new Uint32Array(count);
    const chunk = { clockOffsetNs: WALL_OFFSET_NS, bootId: BOOT_ID };
    assert.equal(native(records, chunk, out, 0, ends), count);
  }
});

Deno.test("the shim stops short of room, and before a record it leaves to RecordWriter", () => {
  const records = joined([
    rawRecord({ cookie: 1n }),
    rawRecord({ cookie: 2n }),
    rawRecord({ workload: "naïve-ü" }), // not ASCII
    rawRecord({ cookie: 4n }),
  ]);
  const chunk = { clockOffsetNs: WALL_OFFSET_NS, bootId: BOOT_ID };
  const ends = new Uint32Array(4);
  // Room for one flow: it writes one and stops.
  assert.equal(native(records, chunk, new Uint8Array(RECORD_ENCODING.room), 0, ends), 1);
  // Room for all: it stops before the third.
  const out = new Uint8Array(4 * RECORD_ENCODING.room);
  assert.equal(native(records, chunk, out, 0, ends), 2);
  // From offset 5, its ends count from the buffer's start.
  assert.equal(native(records, chunk, out, 5, ends), 2);
  assert.equal(ends[0], 5 + (ends[1] - ends[0]));
  // Another boot ID length: none (RecordWriter takes them through its slow path).
  assert.equal(native(records, { ...chunk, bootId: new Uint8Array(8) }, out, 0, ends), 0);
});

Deno.test("random records: the shim writes what RecordWriter writes, and drops the same", () => {
  fc.assert(
    fc.property(
      fc.array(arbitraryRawRecord(), { minLength: 1, maxLength: 24 }),
      fc.boolean(),
      (drawn, ownOffset) => {
        const records = joined(drawn.map((d) => d.record));
        const clockOffsetNs = ownOffset ? drawn[0].clockOffsetNs : WALL_OFFSET_NS;
        assert.deepEqual(
          outcome(records, clockOffsetNs, true),
          outcome(records, clockOffsetNs, false),
        );
      },
    ),
    { numRuns: 500 },
  );
});

/**
 * Records the shim takes as a rule, every field drawn: counters and times around the edges of
 * their CBOR forms (2^32, 2^53), any state, source, direction, error and flags, ASCII workloads
 * up to the full 128 bytes, and now and then one it leaves to RecordWriter.
 */
function arbitraryPlausibleRecord(): fc.Arbitrary<Uint8Array> {
  const edge = (max: bigint) =>
    fc.oneof(
      fc.bigInt({ min: 0n, max }),
      fc.constantFrom(0n, 23n, 24n, 255n, 256n, 65535n, 65536n, 2n ** 32n - 1n, 2n ** 32n, max),
    );
  return fc.record({
    family: fc.constantFrom<4 | 6>(4, 6),
    ends: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    ports: fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 })),
    cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    start: fc.bigInt({ min: 0n, max: 2n ** 50n }),
    length: edge(2n ** 40n),
    counters: fc.array(edge(2n ** 53n - 1n), { minLength: 4, maxLength: 4 }),
    small: fc.array(
      fc.oneof(fc.integer({ min: 0, max: 0xffff_ffff }), fc.constantFrom(23, 24, 65536)),
      {
        minLength: 7,
        maxLength: 7,
      },
    ),
    codes: fc.uint8Array({ minLength: 5, maxLength: 5 }),
    workload: fc.oneof(
      fc.constant(""),
      fc.stringMatching(/^[ -~]{1,128}$/),
      fc.string({ maxLength: 40 }),
    ),
  }).map(({ family, ends, ports, cookie, start, length, counters, small, codes, workload }) => {
    const [identitySource, direction, closeState, error, flags] = codes;
    const record = rawRecord({
      family,
      local: Array.from(ends.subarray(0, 16)),
      remote: Array.from(ends.subarray(16)),
      localPort: ports[0],
      remotePort: ports[1],
      cookie,
      tStartNs: start,
      tEndNs: start + length,
      bytesSent: counters[0],
      bytesRetrans: counters[1],
      workload,
      identitySource,
      direction,
      closeState,
      error,
      flags,
    });
    const view = new DataView(record.buffer);
    view.setBigUint64(AT.bytes_acked, counters[2], true);
    view.setBigUint64(AT.bytes_received, counters[3], true);
    [AT.segs_out, AT.segs_in, AT.total_retrans, AT.srtt_us, AT.min_rtt_us, AT.delivered, AT.lost]
      .forEach((field, i) => view.setUint32(field, small[i], true));
    return record;
  });
}

Deno.test("plausible records, every field drawn: the shim writes what RecordWriter writes", () => {
  let taken = 0;
  let total = 0;
  fc.assert(
    fc.property(fc.array(arbitraryPlausibleRecord(), { minLength: 1, maxLength: 24 }), (drawn) => {
      const records = joined(drawn);
      assert.deepEqual(
        outcome(records, WALL_OFFSET_NS, true),
        outcome(records, WALL_OFFSET_NS, false),
      );
      const out = new Uint8Array(drawn.length * RECORD_ENCODING.room);
      const chunk = { clockOffsetNs: WALL_OFFSET_NS, bootId: BOOT_ID };
      taken += native(records, chunk, out, 0, new Uint32Array(drawn.length));
      total += drawn.length;
    }),
    { numRuns: 500 },
  );
  // Most went through the shim (a run stops at the first non-ASCII workload).
  assert.ok(taken > total / 4, `${taken} of ${total}`);
});
