-- The cluster collector's tables in ClickHouse (collector/cluster/clickhouse_store.ts runs
-- these statements, separated by ";", at the start of every sink; `IF NOT EXISTS` keeps them
-- idempotent). Only features ClickHouse has kept from 18.16 to current releases: MergeTree
-- engines with PARTITION BY / ORDER BY clauses, plain column types, FINAL.
--
-- flows: one row per flow and attribution version. A flow is stored at version 0 when its
-- batch is attributed (attribution 'pending' when its remote owner was not known yet) and again
-- at version 1 when the hold settles it. ReplacingMergeTree keeps, per (hostname, flow_key),
-- the row with the highest version: a batch delivered twice (a replay after JetStream's
-- deduplication window, a redelivery after a node failure) is one flow per row once read with
-- FINAL, which every query does. flow_key is the flow ID (boot ID and socket cookie, hex), or
-- "<batch sequence>:<index>" for flows of wire schema 1 and 2, which carry none.
-- Partitions are days of the flow's start; rows of one flow share its start, so one partition.
CREATE TABLE IF NOT EXISTS flows (
  hostname String,
  flow_key String,
  version UInt8,
  batch_sequence UInt64,
  flow_index UInt32,
  flow_id Nullable(String),
  t_start_ns Int64,
  t_end_ns Int64,
  family UInt8,
  local_ip String,
  local_port UInt16,
  remote_ip String,
  remote_port UInt16,
  local_workload_id String,
  identity_source String,
  seeded UInt8,
  direction String,
  close_state String,
  flow_end String,
  error Int32,
  bytes_sent UInt64,
  bytes_retrans Nullable(UInt64),
  bytes_acked UInt64,
  bytes_received UInt64,
  segs_out UInt64,
  segs_in UInt64,
  total_retrans UInt64,
  srtt_us UInt64,
  min_rtt_us UInt64,
  delivered UInt64,
  lost UInt64,
  remote_key String,
  attribution String,
  remote_workload_id Nullable(String),
  owner_key Nullable(String),
  received_ns Int64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(t_start_ns, 1000000000)))
ORDER BY (hostname, flow_key);

-- revocations: stretches in which later heartbeats showed that attributions through one
-- ownership key (or to one address, by_address = 1) can no longer be trusted; queries apply
-- them as the SQLite collector's flows_attributed view does. Every node that learns the
-- evidence writes its own; identical rows collapse.
CREATE TABLE IF NOT EXISTS revocations (
  key String,
  by_address UInt8,
  from_ns Int64,
  to_ns Int64,
  server_ends_only UInt8,
  status String
) ENGINE = ReplacingMergeTree()
ORDER BY (key, by_address, from_ns, to_ns, server_ends_only, status);

-- batches: one row per batch, as the SQLite collector's batches table: who sent it, the window,
-- and the losses the exporter counted since its previous batch (kernel_drops: records the
-- kernel could not hand over; recursion_misses: BPF runs skipped; spool_evictions: batches of
-- the host that will never arrive), with the SHA-256 of the body (hex). A batch stored twice
-- (a replay after JetStream's window) is one row once read with FINAL; partitions are days of
-- the window's start, which a replay keeps.
CREATE TABLE IF NOT EXISTS batches (
  hostname String,
  sequence UInt64,
  host_workload_id String,
  instance_id Nullable(String),
  exporter_version String,
  window_start_ns Int64,
  window_end_ns Int64,
  record_count UInt64,
  clock_offset_ns Int64,
  kernel_drops UInt64,
  recursion_misses UInt64,
  spool_evictions UInt64,
  received_ns Int64,
  digest String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(toDateTime(intDiv(window_start_ns, 1000000000)))
ORDER BY (hostname, sequence);
