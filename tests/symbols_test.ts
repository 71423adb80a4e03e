/**
 * The bits of the shim's ABI that ffi/symbols.ts repeats: held to their #defines in
 * ffi/flowexporter.c, so the doctor and the agent read the probe the way the shim writes it.
 */
import assert from "node:assert/strict";
import { OpenOption, Probe, RetiringStat, Stat } from "../ffi/symbols.ts";
import { shimDefines, shimEnum } from "./_c_source.ts";

/** `TP_BTF` → `tpBtf`. */
function camel(name: string): string {
  return name.toLowerCase().replace(/_(.)/g, (_, c: string) => c.toUpperCase());
}

function byCamelName(defines: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(defines).map(([name, v]) => [camel(name), v]));
}

Deno.test("Probe holds the FE_PROBE_* bits of fe_probe()", () => {
  assert.deepEqual({ ...Probe }, byCamelName(shimDefines("FE_PROBE_")));
});

Deno.test("OpenOption holds the FE_OPT_* bits of fe_open()", () => {
  assert.deepEqual({ ...OpenOption }, byCamelName(shimDefines("FE_OPT_")));
});

Deno.test("Stat holds the indices of enum fe_stat, in order, and its count", () => {
  const names = shimEnum("fe_stat").map((name) => camel(name.replace(/^FE_STAT_/, "")));
  assert.deepEqual(Object.keys(Stat), names);
  assert.deepEqual(Object.values(Stat), names.map((_, i) => i));
});

Deno.test("RetiringStat holds the indices of enum fe_retiring_stat, in order, and its count", () => {
  const names = shimEnum("fe_retiring_stat").map((name) =>
    camel(name.replace(/^FE_RETIRING_/, ""))
  );
  assert.deepEqual(Object.keys(RetiringStat), names);
  assert.deepEqual(Object.values(RetiringStat), names.map((_, i) => i));
});
