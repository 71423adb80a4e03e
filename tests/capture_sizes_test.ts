/**
 * The capture maps' default sizes are defined once, in lib/capture_sizes.ts; the BPF program
 * must declare the same numbers, which only this test can check.
 */
import assert from "node:assert/strict";
import {
  DEFAULT_FLOWS_MAX,
  DEFAULT_RING_BYTES,
  DEFAULT_WAKEUP_BYTES,
} from "../lib/capture_sizes.ts";
import { OPTIONS } from "../cli/config.ts";
import { bpfConstant, bpfMaxEntries } from "./_c_source.ts";

Deno.test("bpf/flowexporter.bpf.c declares the capture maps with the default sizes", () => {
  assert.equal(bpfMaxEntries("events"), DEFAULT_RING_BYTES);
  assert.equal(bpfMaxEntries("flows"), DEFAULT_FLOWS_MAX);
  assert.equal(bpfConstant("wakeup_bytes"), DEFAULT_WAKEUP_BYTES);
});

Deno.test("the agent's options default to the capture sizes", () => {
  assert.equal(OPTIONS.ring_bytes.default, DEFAULT_RING_BYTES);
  assert.equal(OPTIONS.flows_max.default, DEFAULT_FLOWS_MAX);
});
