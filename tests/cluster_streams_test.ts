/**
 * The cluster's stream layout without a server: which partition a host's batches go to (a
 * contract between nodes and releases) and the streams, subjects and consumers of a count.
 */
import assert from "node:assert/strict";
import {
  consumerConfigs,
  consumerPlaces,
  DEFAULT_STREAM_SETTINGS,
  partitionOf,
  streamConfigs,
} from "../collector/cluster/streams.ts";

Deno.test("a host's partition is FNV-1a of its name, modulo the count", () => {
  // FNV-1a's published test vectors, taken whole (modulo 2^32), then as partitions.
  assert.equal(partitionOf("", 2 ** 32), 0x811c9dc5);
  assert.equal(partitionOf("a", 2 ** 32), 0xe40c292c);
  assert.equal(partitionOf("foobar", 2 ** 32), 0xbf9cf968);
  assert.equal(partitionOf("foobar", 7), 0xbf9cf968 % 7);
  // UTF-8 bytes, not UTF-16 units.
  assert.equal(fnv([0x61]), 0xe40c292c);
  assert.equal(partitionOf("é", 2 ** 32), fnv([0xc3, 0xa9]));
  for (const host of ["web-1", "db-7", ""]) assert.equal(partitionOf(host, 1), 0);
});

/** FNV-1a of `bytes`, written out for the test. */
function fnv(bytes: number[]): number {
  let hash = 2166136261;
  for (const byte of bytes) {
    hash = Number((BigInt((hash ^ byte) >>> 0) * 16777619n) % 2n ** 32n);
  }
  return hash;
}

Deno.test("one partition keeps the plain names; more split batches, held and output", () => {
  const names = (partitions: number) =>
    streamConfigs({ ...DEFAULT_STREAM_SETTINGS, partitions }).map((c) => [c.name, c.subjects]);
  assert.deepEqual(names(1), [
    ["FLOW_OWNERSHIP", ["flowexporter.ownership.>"]],
    ["FLOW_BATCHES", ["flowexporter.batches"]],
    ["FLOW_HELD", ["flowexporter.held"]],
    ["FLOW_OUTPUT", ["flowexporter.flows", "flowexporter.revocations"]],
  ]);
  assert.deepEqual(names(2), [
    ["FLOW_OWNERSHIP", ["flowexporter.ownership.>"]],
    ["FLOW_BATCHES_0", ["flowexporter.batches.0"]],
    ["FLOW_HELD_0", ["flowexporter.held.0"]],
    ["FLOW_OUTPUT_0", ["flowexporter.flows.0", "flowexporter.revocations.0"]],
    ["FLOW_BATCHES_1", ["flowexporter.batches.1"]],
    ["FLOW_HELD_1", ["flowexporter.held.1"]],
    ["FLOW_OUTPUT_1", ["flowexporter.flows.1", "flowexporter.revocations.1"]],
  ]);
  const consumers = consumerConfigs({ ...DEFAULT_STREAM_SETTINGS, partitions: 2 })
    .map(({ stream, config }) => `${config.durable_name} on ${stream}`);
  assert.deepEqual(consumers, [
    "attribution on FLOW_BATCHES_0",
    "attribution on FLOW_BATCHES_1",
    "hold on FLOW_HELD_0",
    "hold on FLOW_HELD_1",
    "clickhouse on FLOW_OUTPUT_0",
    "clickhouse on FLOW_OUTPUT_1",
  ]);
  assert.deepEqual(
    consumerPlaces(2).map((place) => place.consumer),
    ["attribution", "attribution", "hold", "hold", "sink", "sink"],
  );
});
