/**
 * The enumerations of lib/flow.ts are the kernel side's: held here to bpf/flowexporter.h, whose
 * values the BPF program writes into every record.
 */
import assert from "node:assert/strict";
import { DIRECTIONS, IDENTITY_SOURCES } from "../lib/flow.ts";

const HEADER = Deno.readTextFileSync(new URL("../bpf/flowexporter.h", import.meta.url));

/** `NAME = value` pairs of a C enum in the header. */
function cEnum(name: string): Map<string, number> {
  const body = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(HEADER)?.[1];
  assert.ok(body, `enum ${name} is in bpf/flowexporter.h`);
  return new Map(
    [...body.matchAll(/(\w+)\s*=\s*(\d+)/g)].map(([, key, value]) => [key, Number(value)]),
  );
}

Deno.test("DIRECTIONS holds enum fe_direction's values at their indices", () => {
  const values = cEnum("fe_direction");
  assert.deepEqual(
    [...values.entries()],
    [["FE_DIR_UNKNOWN", 0], ["FE_DIR_OUTBOUND", 1], ["FE_DIR_INBOUND", 2]],
  );
  for (const [key, value] of values) {
    assert.equal(DIRECTIONS[value], key.slice("FE_DIR_".length).toLowerCase());
  }
});

Deno.test("IDENTITY_SOURCES holds enum fe_identity_source's values at their indices", () => {
  const values = cEnum("fe_identity_source");
  assert.equal(values.size, IDENTITY_SOURCES.length);
  for (const [key, value] of values) {
    const name = key.slice("FE_ID_".length).toLowerCase().replace("_map", "-map");
    assert.equal(IDENTITY_SOURCES[value], name);
  }
});
