/**
 * lib/flow_fields.ts is the one table of the flow record's fields. The decoder's layout, the JSON
 * writer, the wire format, the collector's columns and the README derive from it or are held to
 * it here.
 */
import assert from "node:assert/strict";
import { decodeFlow, FLAG_INTERIM, RECORD_OFFSETS } from "../lib/decode.ts";
import { FLOW_FIELDS, flowFieldReference } from "../lib/flow_fields.ts";
import { formatFlowJson } from "../lib/json_lines.ts";
import { FLOW_KEYS } from "../lib/wire.ts";
import { rawRecord } from "./_raw_records.ts";

const names = FLOW_FIELDS.map((f) => f.name);

Deno.test("the JSON writer writes the table's fields, in its order", () => {
  const record = decodeFlow(rawRecord(), 0, 0n, new Uint8Array(16));
  assert.ok(record.closeSeenBy, "a captured record says which program saw its close");
  assert.deepEqual(Object.keys(JSON.parse(formatFlowJson(record))), names);
});

Deno.test("an interim record's JSON line has every field but close_seen_by", () => {
  const record = decodeFlow(rawRecord({ flags: FLAG_INTERIM }), 0, 0n, new Uint8Array(16));
  const line = JSON.parse(formatFlowJson(record));
  assert.deepEqual(Object.keys(line), names.filter((name) => name !== "close_seen_by"));
  assert.equal(line.record_kind, "interim");
  assert.equal(line.end, "open");
});

Deno.test("every member of struct fe_flow feeds a field", () => {
  const fed = new Set(FLOW_FIELDS.flatMap((f) => f.record));
  assert.deepEqual(Object.keys(RECORD_OFFSETS).filter((m) => !fed.has(m as never)), []);
});

Deno.test("the wire carries exactly the table's wire fields", () => {
  const wire = FLOW_FIELDS.filter((f) => f.wire).map((f) => f.name);
  assert.deepEqual([...FLOW_KEYS].sort(), [...wire].sort());
});

Deno.test("the collector has a column for every field it stores", () => {
  const store = Deno.readTextFileSync(new URL("../collector/store.ts", import.meta.url));
  const table = /CREATE TABLE IF NOT EXISTS flows \(([^;]*?)\n\);/.exec(store)?.[1];
  assert.ok(table, "the flows table is in collector/store.ts");
  const columns = new Set([...table.matchAll(/^\s+(\w+) /gm)].map((m) => m[1]));
  for (const field of FLOW_FIELDS.filter((f) => f.wire)) {
    assert.ok(field.column, `${field.name} is on the wire, so the collector stores it`);
    assert.ok(columns.has(field.column), `column ${field.column} of ${field.name}`);
  }
});

Deno.test("the README's field table is flowFieldReference()", () => {
  const readme = Deno.readTextFileSync(new URL("../README.md", import.meta.url));
  assert.ok(
    readme.includes(flowFieldReference()),
    "README.md is out of date: paste flowFieldReference() from lib/flow_fields.ts into it",
  );
});
