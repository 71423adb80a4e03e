/**
 * The JetStream streams and durable consumers of a collector cluster, once: their names,
 * subjects and configuration. Every node creates what is missing at start
 * ({@linkcode ensureStreams}); `flowexporter collector check --nats` compares what exists with
 * what is expected ({@linkcode checkStreams}).
 *
 * - `FLOW_BATCHES` (work queue): validated batches as ingest prepared them, message ID
 *   `hostname:sequence`; the durable `attribution` consumer shares them between nodes.
 * - `FLOW_OWNERSHIP` (log, kept `retention` long): each batch's merged heartbeats, on a subject
 *   of its own (`ownershipSubject`) with the SHA-256 of the batch body in a header, written only
 *   where none is (JetStream's expected last subject sequence 0): a reused sequence with other
 *   content is found there and refused (409). Every node reads all of it into its map.
 * - `FLOW_HELD` (work queue): flows whose remote owner was unknown, redelivered (`nak` with a
 *   delay) until a heartbeat settles them or the hold time is over; durable `hold`.
 * - `FLOW_OUTPUT` (log, for any downstream consumer): attributed flows by batch, settlements
 *   of held flows, and revocations; the durable `clickhouse` consumer feeds the sink.
 *
 * A JetStream stream has one leader, which takes every write to it: one stream of batches would
 * be the cluster's single writer. With `partitions` above 1, the batch, held and output streams
 * are split by host ({@linkcode partitionOf}): `FLOW_BATCHES_0` on `flowexporter.batches.0` and
 * so on, each with its own leader, placed by JetStream across the servers, and its own durable
 * consumers, which every node reads. A host's batches, held flows and output all go to its
 * partition, so message-ID deduplication (by `hostname:sequence`) works within one stream as
 * before. The ownership log is one stream: one small entry per batch, read whole by every node.
 * One partition keeps the names above.
 *
 * @module
 */

import {
  AckPolicy,
  type ConsumerConfig,
  DeliverPolicy,
  DiscardPolicy,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "@nats-io/jetstream";
import { Buffer } from "node:buffer";
import { errorText } from "../../lib/error_text.ts";

/** Subjects the cluster publishes on. */
export const SUBJECTS = {
  batches: "flowexporter.batches",
  ownership: "flowexporter.ownership.>",
  held: "flowexporter.held",
  flows: "flowexporter.flows",
  revocations: "flowexporter.revocations",
} as const;

/**
 * The subject of batch `hostname:sequence`'s entry in `FLOW_OWNERSHIP`: the host name in
 * base64url (a name may hold characters a subject may not).
 */
export function ownershipSubject(hostname: string, sequence: number): string {
  const name = Buffer.from(hostname).toString("base64url");
  return `${SUBJECTS.ownership.slice(0, -1)}${name === "" ? "-" : name}.${sequence}`;
}

/** Stream names. */
export const STREAMS = {
  batches: "FLOW_BATCHES",
  ownership: "FLOW_OWNERSHIP",
  held: "FLOW_HELD",
  output: "FLOW_OUTPUT",
} as const;

/** The streams split into partitions (see the module documentation). */
export type PartitionedStream = "batches" | "held" | "output";

/** Durable consumer names, each on every partition of its stream. */
export const CONSUMERS = {
  attribution: { stream: "batches", name: "attribution" },
  hold: { stream: "held", name: "hold" },
  sink: { stream: "output", name: "clickhouse" },
} as const satisfies Record<string, { stream: PartitionedStream; name: string }>;

const utf8 = new TextEncoder();

/**
 * The partition of a host's batches: FNV-1a (32-bit) of its name's UTF-8 bytes, modulo
 * `partitions`. Every node and release must agree on it, or a retry would reach another stream,
 * whose deduplication does not know the first copy.
 */
export function partitionOf(hostname: string, partitions: number): number {
  let hash = 0x811c9dc5;
  for (const byte of utf8.encode(hostname)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return hash % partitions;
}

/** The name of partition `p` of stream `kind` (the plain name when there is one partition). */
export function partitionStream(kind: PartitionedStream, p: number, partitions: number): string {
  return partitions === 1 ? STREAMS[kind] : `${STREAMS[kind]}_${p}`;
}

/** The subject of partition `p` of `subject` (the plain subject when there is one partition). */
export function partitionSubject(
  subject: Exclude<keyof typeof SUBJECTS, "ownership">,
  p: number,
  partitions: number,
): string {
  return partitions === 1 ? SUBJECTS[subject] : `${SUBJECTS[subject]}.${p}`;
}

/** Every durable consumer of the cluster, on every partition: the stream it reads and its name. */
export function consumerPlaces(
  partitions: number,
): { consumer: keyof typeof CONSUMERS; stream: string; name: string }[] {
  return Object.entries(CONSUMERS).flatMap(([consumer, { stream, name }]) =>
    Array.from({ length: partitions }, (_, p) => ({
      consumer: consumer as keyof typeof CONSUMERS,
      stream: partitionStream(stream, p, partitions),
      name,
    }))
  );
}

/** Headers a node sets on what it publishes. */
export const HEADERS = {
  /** The batch's entry in `FLOW_OWNERSHIP`: attribute it once the map has it. */
  ownershipSeq: "Flowexporter-Ownership-Seq",
  /** SHA-256 of the batch body (hex), on its ownership entry. */
  digest: "Flowexporter-Batch-Digest",
} as const;

/** What the streams are sized by. */
export interface StreamSettings {
  /** Replicas of every stream: 3 in production (a node may fail), 1 for a single server. */
  replicas: number;
  /** JetStream's window for message-ID deduplication, seconds. */
  duplicateWindowSeconds: number;
  /** How long ownership is kept (the collector's `retention_seconds`). */
  retentionSeconds: number;
  /** How long batches, held flows and output are kept at most, seconds. */
  maxAgeSeconds: number;
  /** Largest message, bytes (a compressed batch body); the servers' `max_payload` or less. */
  maxMessageBytes: number;
  /**
   * Partitions of the batch, held and output streams (see the module documentation): every
   * node of a cluster must have the same.
   */
  partitions: number;
}

/** Defaults of {@linkcode StreamSettings}. */
export const DEFAULT_STREAM_SETTINGS: StreamSettings = {
  replicas: 3,
  duplicateWindowSeconds: 120,
  retentionSeconds: 3600,
  maxAgeSeconds: 86_400,
  maxMessageBytes: 8 * 1024 * 1024,
  partitions: 1,
};

/** How long a consumer waits for an acknowledgement before it redelivers, seconds. */
export const ACK_WAIT_SECONDS = 30;

const NS_PER_S = 1_000_000_000;

/** The configuration every stream must have. */
export function streamConfigs(
  settings: StreamSettings,
): (Partial<StreamConfig> & { name: string })[] {
  const common = {
    storage: StorageType.File,
    num_replicas: settings.replicas,
    duplicate_window: settings.duplicateWindowSeconds * NS_PER_S,
    max_msg_size: settings.maxMessageBytes,
    discard: DiscardPolicy.Old,
  };
  const day = settings.maxAgeSeconds * NS_PER_S;
  const n = settings.partitions;
  const streams: [string, string[], RetentionPolicy, number][] = [
    [
      STREAMS.ownership,
      [SUBJECTS.ownership],
      RetentionPolicy.Limits,
      settings.retentionSeconds * NS_PER_S,
    ],
  ];
  for (let p = 0; p < n; p++) {
    streams.push(
      [
        partitionStream("batches", p, n),
        [partitionSubject("batches", p, n)],
        RetentionPolicy.Workqueue,
        day,
      ],
      [
        partitionStream("held", p, n),
        [partitionSubject("held", p, n)],
        RetentionPolicy.Workqueue,
        day,
      ],
      [
        partitionStream("output", p, n),
        [partitionSubject("flows", p, n), partitionSubject("revocations", p, n)],
        RetentionPolicy.Limits,
        day,
      ],
    );
  }
  return streams.map(([name, subjects, retention, max_age]) => ({
    ...common,
    name,
    subjects,
    retention,
    max_age,
  }));
}

/** The configuration every durable consumer must have. */
export function consumerConfigs(
  settings: StreamSettings,
): { stream: string; config: Partial<ConsumerConfig> }[] {
  return consumerPlaces(settings.partitions).map(({ stream, name }) => ({
    stream,
    config: {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: ACK_WAIT_SECONDS * NS_PER_S,
      max_deliver: -1,
      max_ack_pending: 20_000,
    },
  }));
}

/** The stream configuration could not be created or differs from what this node expects. */
export class StreamConfigError extends Error {
  /** Creates the error; `message` is one sentence-case line. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StreamConfigError";
  }
}

/**
 * Creates the streams and consumers that are missing; leaves existing ones as they are (an
 * operator may have tuned them) unless they differ in a way that breaks the cluster, which
 * {@linkcode checkStreams} reports.
 *
 * @throws {StreamConfigError} naming the stream when JetStream refuses it
 */
export async function ensureStreams(
  jsm: JetStreamManager,
  settings: StreamSettings,
): Promise<void> {
  const stray = await strayWork(jsm, settings);
  if (stray.length > 0) throw new StreamConfigError(stray[0]);
  for (const config of streamConfigs(settings)) {
    try {
      await jsm.streams.info(config.name);
    } catch {
      try {
        await jsm.streams.add(config);
      } catch (error) {
        throw new StreamConfigError(
          `Cannot create stream ${config.name}: ${
            errorText(error)
          } (a ${settings.replicas}-replica stream needs that many JetStream servers; see --nats-replicas)`,
          { cause: error },
        );
      }
    }
  }
  for (const { stream, config } of consumerConfigs(settings)) {
    try {
      await jsm.consumers.info(stream, config.durable_name!);
    } catch {
      try {
        await jsm.consumers.add(stream, config);
      } catch (error) {
        throw new StreamConfigError(
          `Cannot create consumer ${config.durable_name} on ${stream}: ${errorText(error)}`,
          { cause: error },
        );
      }
    }
  }
}

/**
 * Compares the streams and consumers with what the cluster needs: one line per problem, empty
 * when all is well.
 */
export async function checkStreams(
  jsm: JetStreamManager,
  settings: StreamSettings,
): Promise<string[]> {
  const problems = await strayWork(jsm, settings);
  for (const want of streamConfigs(settings)) {
    let have: StreamConfig;
    try {
      have = (await jsm.streams.info(want.name)).config;
    } catch (error) {
      problems.push(`Stream ${want.name} is missing (${errorText(error)}): a node creates it`);
      continue;
    }
    const differs = (field: keyof StreamConfig, why: string) => {
      if (JSON.stringify(have[field]) !== JSON.stringify(want[field])) {
        problems.push(
          `Stream ${want.name} has ${field} ${JSON.stringify(have[field])}, expected ${
            JSON.stringify(want[field])
          }: ${why}`,
        );
      }
    };
    differs("subjects", "nodes publish and read these subjects");
    differs("retention", "the work queues must drop what was handled; the logs must keep it");
    differs("storage", "batches acknowledged to agents must survive a restart");
    if (have.num_replicas < want.num_replicas!) {
      problems.push(
        `Stream ${want.name} has ${have.num_replicas} replicas, expected ${want.num_replicas}: a server failure would lose acknowledged batches`,
      );
    }
    if (want.name === STREAMS.ownership && have.max_age < want.max_age!) {
      problems.push(
        `Stream ${want.name} keeps ownership ${
          have.max_age / NS_PER_S
        } s, less than the retention ${settings.retentionSeconds} s: a restarted node would rebuild less than the others know`,
      );
    }
  }
  for (const { stream, config } of consumerConfigs(settings)) {
    try {
      const have = (await jsm.consumers.info(stream, config.durable_name!)).config;
      if (have.ack_policy !== AckPolicy.Explicit) {
        problems.push(
          `Consumer ${config.durable_name} on ${stream} has ack_policy ${have.ack_policy}, expected explicit: work would be lost with a node`,
        );
      }
    } catch (error) {
      problems.push(
        `Consumer ${config.durable_name} on ${stream} is missing (${
          errorText(error)
        }): a node creates it`,
      );
    }
  }
  return problems;
}

/** A partitioned stream's name: its kind's name, then `_` and the partition, or nothing. */
const PARTITIONED_NAME = new RegExp(
  `^(${[STREAMS.batches, STREAMS.held, STREAMS.output].join("|")})(_\\d+)?$`,
);

/**
 * Work left in streams of another partition count than `settings.partitions` (a cluster that
 * changed its count, or a node started with another): one line per stream whose consumers have
 * entries to handle. No node of this count reads those streams, so nodes refuse to start until
 * nodes of the old count have drained them.
 */
async function strayWork(jsm: JetStreamManager, settings: StreamSettings): Promise<string[]> {
  const expected = new Set(streamConfigs(settings).map((config) => config.name));
  const problems: string[] = [];
  for await (const stream of jsm.streams.names()) {
    if (expected.has(stream) || !PARTITIONED_NAME.test(stream)) continue;
    let waiting = 0;
    for await (const consumer of jsm.consumers.list(stream)) {
      waiting += consumer.num_pending + consumer.num_ack_pending;
    }
    if (waiting > 0) {
      problems.push(
        `Stream ${stream} has ${waiting} entries waiting, but nodes with ${settings.partitions} partition${
          settings.partitions === 1 ? "" : "s"
        } (--nats-partitions) do not read it: finish them with nodes of the partition count that made it, then change the count (docs/cluster.md, Upgrades)`,
      );
    }
  }
  return problems;
}
