/**
 * The collector's defaults, in a module of their own: the option schema (`config.ts`), which the
 * agent's configuration reads too, takes them from here without loading the server, SQLite or
 * the cluster's clients into every agent (tests/agent_modules_test.ts holds the agent to that).
 *
 * @module
 */
import { MAX_BATCH_BYTES } from "../lib/wire.ts";

/** Database file the collector and `flowexporter query` use when `--db` is not given. */
export const DEFAULT_DB_PATH = "flows.db";

/** Default of `checkNotInFuture`'s `maxClockSkewNs` (`ingest.ts`): one day. */
export const DEFAULT_MAX_CLOCK_SKEW_NS = 86_400_000_000_000n;

/** Port the collector listens on by default. */
export const DEFAULT_PORT = 9470;

/**
 * Defaults of the limits in `CollectorOptions` (`server.ts`), for option tables and docs. Memory
 * in the worst case is about `maxPendingBodyBytes + maxConcurrentIngests *
 * maxDecompressedBytes` plus one decoded batch (about 700 bytes per flow, so 140 MiB at
 * `maxBatchRecords`) plus SQLite's 64 MiB page cache.
 */
export const DEFAULT_LIMITS = {
  /** Largest request body, compressed: 16 MiB. */
  maxBodyBytes: 16 * 1024 * 1024,
  /** Largest body after decompression: the wire format's limit, 64 MiB. */
  maxDecompressedBytes: MAX_BATCH_BYTES,
  /**
   * Most flows in one batch: 200 000, above what an exporter's default caps allow (100 000
   * flows, 16 MiB: at most 190 000 flows of the smallest kind).
   */
  maxBatchRecords: 200_000,
  /** Compressed bodies in memory at once, all requests together: 128 MiB. */
  maxPendingBodyBytes: 128 * 1024 * 1024,
  /** Batches decompressed, decoded and stored at once: 4. */
  maxConcurrentIngests: 4,
  /** Seconds a client has for a request's head (line and headers): 10. */
  headerTimeoutSeconds: 10,
  /** Seconds a client has for a request's body, from the end of its head: 60. */
  bodyTimeoutSeconds: 60,
  /** Seconds a window or flow may end after the collector's now: one day. */
  maxClockSkewSeconds: Number(DEFAULT_MAX_CLOCK_SKEW_NS / 1_000_000_000n),
} as const;
