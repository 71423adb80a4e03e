/** The buffer of encoded flows, and finding each flow's end again in what a journal holds. */
import assert from "node:assert/strict";
import { FlowBuffer, splitFlows } from "../lib/encoded_flows.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { encodeFlow, flowWriterOf, WireFormatError } from "../lib/wire.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";

/** More flows than the buffer's first bytes (64 KiB) and ends (1024) hold. */
const FLOWS = Array.from({ length: 3000 }, (_, i) => syntheticFlow(i));

function encodedOnce(records: FlowRecord[]): { bytes: number[]; ends: number[] } {
  const bytes: number[] = [];
  const ends: number[] = [];
  for (const record of records) {
    bytes.push(...encodeFlow(record));
    ends.push(bytes.length);
  }
  return { bytes, ends };
}

Deno.test("a flow buffer grows to hold every flow, encoded as encodeFlow() encodes it", () => {
  const buffer = new FlowBuffer();
  for (const record of FLOWS) buffer.append(flowWriterOf(record));
  const { bytes, ends } = buffer.flows;
  const expected = encodedOnce(FLOWS);
  assert.deepEqual([...ends], expected.ends);
  assert.deepEqual([...bytes], expected.bytes);
  buffer.clear();
  buffer.append(flowWriterOf(FLOWS[7]));
  assert.deepEqual([...buffer.flows.bytes], [...encodeFlow(FLOWS[7])], "cleared, then reused");
});

Deno.test("an invalid flow throws and leaves the buffer as it was", () => {
  const buffer = new FlowBuffer();
  buffer.append(flowWriterOf(FLOWS[0]));
  const before = buffer.flows.bytes.slice();
  const invalid = { ...FLOWS[1], localIp: new Uint8Array(5) };
  assert.throws(() => buffer.append(flowWriterOf(invalid)), WireFormatError);
  buffer.append(flowWriterOf(FLOWS[2]));
  const { bytes, ends } = buffer.flows;
  assert.equal(ends.length, 2);
  assert.deepEqual(bytes.subarray(0, ends[0]), before);
  assert.deepEqual([...bytes.subarray(ends[0])], [...encodeFlow(FLOWS[2])]);
});

Deno.test("splitFlows() finds each flow's end, and refuses what is not whole maps", () => {
  const expected = encodedOnce(FLOWS.slice(0, 50));
  const bytes = Uint8Array.from(expected.bytes);
  assert.deepEqual([...splitFlows(bytes)!.ends], expected.ends);
  assert.deepEqual([...splitFlows(new Uint8Array(0))!.ends], []);
  assert.equal(splitFlows(bytes.subarray(0, bytes.length - 1)), undefined, "cut short");
  assert.equal(splitFlows(Uint8Array.of(0x01)), undefined, "an integer, not a map");
});
