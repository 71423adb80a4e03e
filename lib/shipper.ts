/**
 * Ships flows to the collector: batcher → spool → sender.
 *
 * Flows are encoded into the open window as they arrive; each closed window becomes a batch
 * (header, compressed with zstd or gzip) that is written durably to the spool, then sent in sequence order, oldest
 * first (batches left by an earlier run go first). A batch leaves the spool only once the
 * collector accepted it, or set aside when the collector refused it for good.
 *
 * Loss counters: `lossCounters()` returns cumulative counters of the BPF side; each batch
 * reports the increase since the previous batch (a counter that went down counts from zero).
 * The first batch of a run counts from `lossReported`, what earlier runs of the same capture
 * reported (the kernel drops survive restarts with the pinned capture; recursion misses are per
 * program and start anew). Spool evictions survive restarts in the spool's state file.
 *
 * @module
 */

import { DecodeError } from "./decode.ts";
import type { FlowRecord } from "./flow.ts";
import {
  BODY_CODINGS,
  type BodyCoding,
  DEFAULT_BODY_CODING,
  DEFAULT_GZIP_LEVEL,
  type FrameCompressor,
} from "./body_coding.ts";
import { type Logger, silentLogger } from "./logger.ts";
import { sleep } from "./_sleep.ts";
import { Batcher, type ClosedWindow } from "./batcher.ts";
import type { EncodedFlows } from "./encoded_flows.ts";
import { Sender, type SenderOptions, type SendResult } from "./sender.ts";
import { Spool, type SpoolEntry } from "./spool.ts";
import {
  type BatchHeader,
  type BatchHost,
  encodeBatchHead,
  idempotencyKey,
  MAX_BATCH_BYTES,
  SCHEMA_VERSION,
  WireFormatError,
} from "./wire.ts";
import { errorText } from "./error_text.ts";

export type { Logger, LogLevel } from "./logger.ts";

/** Cumulative loss counters of the running BPF program. */
export interface KernelLossCounters {
  /** Records the kernel could not hand over (ring buffer full). */
  kernelDrops: bigint;
  /** Program runs the kernel skipped (recursion). */
  recursionMisses: bigint;
}

/**
 * Options of {@linkcode Shipper}. The {@linkcode SenderOptions} fields (token, TLS files,
 * timeouts, retry bounds, `fetch`) apply when `collectorUrl` is set.
 */
export interface ShipperOptions extends Omit<SenderOptions, "url"> {
  /** Spool directory; created when missing. */
  spoolDir: string;
  /** Collector endpoint; without one, batches are only spooled (within the spool cap). */
  collectorUrl?: string;
  /** Version of the agent, carried in every batch. */
  exporterVersion: string;
  /** This host's identity, asked for at each batch. */
  host: () => BatchHost;
  /** Wall clock minus CLOCK_BOOTTIME, ns, asked for at each batch. */
  clockOffsetNs: () => bigint;
  /** Cumulative loss counters, asked for at each batch. */
  lossCounters: () => KernelLossCounters;
  /**
   * The counters' values an earlier run already reported (default zero): the first batch
   * reports what came after them.
   */
  lossReported?: KernelLossCounters;
  /** Window length, ms (default one minute, aligned to the wall-clock minute). */
  intervalMs?: number;
  /** Flows per batch before a window closes early. */
  maxRecords?: number;
  /** Encoded (uncompressed) flow bytes per batch before a window closes early. */
  maxBytes?: number;
  /** Cap on the spool's bytes on disk. */
  spoolMaxBytes?: number;
  /**
   * Coding of batch bodies (default zstd). A collector that answers 415 to zstd gets gzip from
   * then on: each batch is recompressed on its way.
   */
  compression?: BodyCoding;
  /** Gzip level of batch bodies, 1 to 9, when the coding is gzip. */
  gzipLevel?: number;
  /**
   * Compresses each piece of a window as it fills, and each batch's head: the shim's in the
   * agent (ffi/frame_compressor.ts), node:zlib's `compressFrame` (compression.ts) elsewhere.
   */
  compressFrame: FrameCompressor;
  /** Receives log lines. */
  logger?: Logger;
  /** Wall clock, ms since the epoch (tests). */
  now?: () => number;
  /**
   * Called once window `window` (numbered from 0 in this shipper, see
   * {@linkcode Shipper.openWindow}) is durably in the spool: what journals its flows may let go.
   * `lossReported` holds the loss counters reported so far, for the next run's `lossReported`.
   */
  onSpooled?: (window: number, lossReported: KernelLossCounters) => void;
  /**
   * Called when the shipper goes quiet after a window that closed on its interval: the window
   * is spooled and, with a collector, nothing more waits to be sent. What the work allocated and
   * freed can be given back then (cli/run.ts gives back the C heap's free memory and the
   * compressor's tables). Not after a window closed on its caps: a busy host's windows close
   * every second or so, and memory given back would be taken again at once.
   */
  onQuiet?: () => void;
}

/** Counters for metrics, since the shipper was created. */
export interface ShipperStats {
  /** Flows accepted by `add`. */
  recordsAdded: number;
  /** Flows refused by `add` because a field was out of range. */
  recordsInvalid: number;
  /** Flows in batches the collector accepted. */
  recordsSent: number;
  /** Batches written to the spool. */
  batchesSpooled: number;
  /** Batches the collector accepted. */
  batchesSent: number;
  /** Send rounds that used up their attempts (the batch stays spooled and is tried again). */
  batchesFailed: number;
  /** Retry attempts, all batches together. */
  batchesRetried: number;
  /** Batches the collector refused for good (set aside in the spool's `rejected/`). */
  batchesRejected: number;
  /** Batches lost because they could not be written to the spool. */
  batchesLost: number;
  /**
   * Closed windows still being compressed and spooled; each holds at most `maxBytes`, so a
   * producer can use this as a backpressure signal.
   */
  windowsPending: number;
  /** Bytes in the spool, set-aside files included. */
  spoolBytes: number;
  /** Unsent batches in the spool. */
  spoolFiles: number;
  /** Age of the oldest unsent batch, ms. */
  oldestBatchAgeMs: number;
  /** Unsent batches evicted to respect the spool cap. */
  spoolEvictions: number;
}

/**
 * Batches, spools and sends flows.
 *
 * @example
 * ```ts
 * import { Shipper } from "./shipper.ts";
 * import { compressFrame } from "./compression.ts";
 * const shipper = new Shipper({
 *   spoolDir: "/var/lib/flowexporter/spool",
 *   collectorUrl: "https://collector.example:8443/v1/batches",
 *   tokenFile: "/run/secrets/collector-token",
 *   exporterVersion: "0.1.0",
 *   host: () => ({ hostname: Deno.hostname(), workloadId: "" }),
 *   clockOffsetNs: () => 0n,
 *   lossCounters: () => ({ kernelDrops: 0n, recursionMisses: 0n }),
 *   compressFrame,
 *   logger: (level, message) => console.error(`${level}: ${message}`),
 * });
 * await shipper.start();
 * // shipper.add(record) for each flow; on SIGTERM:
 * await shipper.close(10_000);
 * ```
 */
export class Shipper {
  readonly #options: ShipperOptions;
  readonly #log: Logger;
  readonly #batcher: Batcher;
  readonly #abort = new AbortController();
  readonly #stats = {
    recordsAdded: 0,
    recordsInvalid: 0,
    recordsSent: 0,
    batchesSpooled: 0,
    batchesSent: 0,
    batchesFailed: 0,
    batchesRetried: 0,
    batchesRejected: 0,
    batchesLost: 0,
    windowsPending: 0,
  };
  #spool: Spool | undefined;
  #spoolOpening: Promise<Spool> | undefined;
  #sender: Sender | undefined;
  #sealing: Promise<void> = Promise.resolve();
  #sendLoop: Promise<void> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** A window closed on its interval was spooled since `onQuiet` was last called. */
  #quietDue = false;
  #wake: (() => void) | undefined;
  /** Aborted when `close()` starts draining: cuts a retry pause short for a last round. */
  readonly #drain = new AbortController();
  #started: Promise<void> | undefined;
  #closing: Promise<ShipperStats> | undefined;
  #lossBase: KernelLossCounters = { kernelDrops: 0n, recursionMisses: 0n };
  #windowsClosed = 0;
  #lastHost: BatchHost | undefined;
  #lastClockOffsetNs = 0n;
  /** Coding of batches in the spool. */
  readonly #coding: BodyCoding;
  /** The collector answered 415 to zstd: every batch goes as gzip. */
  #collectorGzipOnly = false;
  /** Batches that could not be spooled since the last one that was: logged once per incident. */
  #unspooled: { batches: number; flows: number } | undefined;

  /**
   * @param options spool, collector, identity and clock providers, caps
   * @throws {RangeError} when the interval or a cap is out of range
   */
  constructor(options: ShipperOptions) {
    this.#options = options;
    this.#log = options.logger ?? silentLogger;
    this.#lossBase = options.lossReported ?? this.#lossBase;
    this.#coding = options.compression ?? DEFAULT_BODY_CODING;
    this.#batcher = new Batcher({
      intervalMs: options.intervalMs,
      maxRecords: options.maxRecords,
      maxBytes: options.maxBytes,
      now: options.now,
      compress: (piece) => this.#compressFrame(piece),
      onWindow: (window) => {
        const number = this.#windowsClosed++;
        this.#stats.windowsPending++;
        this.#sealing = this.#sealing.then(() => this.#seal(window, number));
      },
    });
    this.#abort.signal.addEventListener("abort", () => this.#wake?.());
  }

  /**
   * Opens the spool, queues the batches an earlier run left (oldest first), and starts
   * closing windows on time and sending. Safe to call twice.
   *
   * @throws when the spool directory cannot be opened, or the collector URL or TLS files are
   *   invalid ({@linkcode import("./sender.ts").SenderConfigError})
   */
  start(): Promise<void> {
    this.#started ??= (async () => {
      if (this.#closing) throw new Error("Cannot start the shipper: it is closed");
      await this.#openSpool();
      if (this.#options.collectorUrl !== undefined) {
        this.#sender = await Sender.create({
          ...this.#options,
          url: this.#options.collectorUrl,
          logger: this.#log,
        });
        this.#sendLoop = this.#runSendLoop(this.#sender);
      } else {
        this.#log("info", `No collector URL: batches stay in the spool ${this.#options.spoolDir}`);
      }
      this.#schedule();
    })();
    return this.#started;
  }

  /**
   * Adds a flow to the open window. Flows added after the window's end go to the next window.
   * A flow with an out-of-range field is dropped, counted and logged.
   *
   * @param record the flow
   * @throws {Error} after `close()` was called: stop the producers first
   */
  add(record: FlowRecord): void {
    if (this.#closing) throw new Error("Cannot add a flow: the shipper is closed");
    try {
      this.#batcher.add(record);
      this.#stats.recordsAdded++;
    } catch (error) {
      if (!this.dropInvalid(error)) throw error;
    }
  }

  /**
   * Like {@linkcode add} for each of `flows`, encoded already (one poll's kernel records, encoded
   * where they lie by lib/intake.ts), into the window open now.
   *
   * @throws {Error} after `close()` was called: stop the producers first
   */
  addEncoded(flows: EncodedFlows): void {
    if (this.#closing) throw new Error("Cannot add flows: the shipper is closed");
    this.#batcher.addEncoded(flows);
    this.#stats.recordsAdded += flows.ends.length;
  }

  /**
   * Counts and logs a flow that could not be encoded, for a caller that encodes flows itself
   * ({@linkcode addEncoded}).
   *
   * @returns false, counting nothing, when `error` is not about the flow's content
   */
  dropInvalid(error: unknown): boolean {
    if (!(error instanceof WireFormatError) && !(error instanceof DecodeError)) return false;
    const n = ++this.#stats.recordsInvalid;
    if (n === 1 || n % 1000 === 0) {
      this.#log("warn", `Dropped an invalid flow (${n} so far): ${error.message}`);
    }
    return true;
  }

  /**
   * Kernel drops counted outside `lossCounters()` that no batch reported (a retired capture's):
   * the next batch reports them with its own.
   */
  addUnreportedKernelDrops(drops: bigint): void {
    this.#lossBase = { ...this.#lossBase, kernelDrops: this.#lossBase.kernelDrops - drops };
  }

  /**
   * Number of the open window: windows are numbered from 0 as this shipper opens them. A flow
   * added now lands in this window or, when it closes the window on a cap, the next.
   */
  get openWindow(): number {
    return this.#windowsClosed;
  }

  /** Counters for metrics. */
  stats(): ShipperStats {
    const spool = this.#spool?.stats();
    return {
      ...this.#stats,
      spoolBytes: spool?.bytes ?? 0,
      spoolFiles: spool?.files ?? 0,
      oldestBatchAgeMs: spool?.oldestAgeMs ?? 0,
      spoolEvictions: spool?.evictions ?? 0,
    };
  }

  /**
   * Shuts down: closes the open window early, spools it, and tries to deliver every spooled
   * batch until `deadlineMs` has passed; what is left stays in the spool for the next start.
   * Safe to call twice (the second call returns the first call's promise).
   *
   * @param deadlineMs how long delivery may take, ms from now
   * @returns the final counters
   */
  close(deadlineMs: number): Promise<ShipperStats> {
    this.#closing ??= this.#shutdown(deadlineMs);
    return this.#closing;
  }

  async #shutdown(deadlineMs: number): Promise<ShipperStats> {
    const deadline = setTimeout(() => this.#abort.abort(), Math.max(0, deadlineMs));
    try {
      clearTimeout(this.#timer);
      this.#batcher.flush();
      await this.#started?.catch(() => {});
      await this.#sealing;
      this.#drain.abort();
      if (this.#sender && this.#sendLoop) {
        this.#wake?.();
        await this.#sendLoop;
      }
      const left = this.#spool?.stats().files ?? 0;
      if (left > 0 && this.#sender) {
        this.#log("warn", `Shutdown: ${left} batches stay in the spool for the next start`);
      }
      return this.stats();
    } finally {
      clearTimeout(deadline);
      this.#abort.abort();
      this.#sender?.close();
    }
  }

  #openSpool(): Promise<Spool> {
    this.#spoolOpening ??= Spool.open({
      dir: this.#options.spoolDir,
      maxBytes: this.#options.spoolMaxBytes,
      logger: this.#log,
      now: this.#options.now,
    }).then((spool) => (this.#spool = spool));
    return this.#spoolOpening;
  }

  /** Closes windows on time even when no flow arrives. */
  #schedule(): void {
    if (this.#closing) return;
    this.#timer = setTimeout(() => {
      this.#batcher.tick();
      this.#schedule();
    }, Math.max(10, this.#batcher.msUntilClose()));
  }

  /** Calls `onQuiet` once for the windows closed on their interval since it was last called. */
  #announceQuiet(): void {
    if (!this.#quietDue) return;
    this.#quietDue = false;
    this.#options.onQuiet?.();
  }

  async #seal(window: ClosedWindow, number: number): Promise<void> {
    let sequence: number | undefined;
    try {
      const spool = await this.#openSpool();
      sequence = spool.nextSequence;
      const current = this.#provide("loss counters", this.#options.lossCounters, this.#lossBase);
      const header: BatchHeader = {
        schemaVersion: SCHEMA_VERSION,
        exporterVersion: this.#options.exporterVersion,
        host: this.#lastHost = this.#provide("host identity", this.#options.host, this.#lastHost),
        sequence,
        windowStartNs: window.windowStartNs,
        windowEndNs: window.windowEndNs,
        recordCount: window.recordCount,
        clockOffsetNs: this.#lastClockOffsetNs = this.#provide(
          "clock offset",
          this.#options.clockOffsetNs,
          this.#lastClockOffsetNs,
        ),
        loss: {
          kernelDrops: increase(this.#lossBase.kernelDrops, current.kernelDrops),
          recursionMisses: increase(this.#lossBase.recursionMisses, current.recursionMisses),
          spoolEvictions: spool.unreportedEvictions,
        },
      };
      const head = this.#compressFrame(encodeBatchHead(header, window.byteLength));
      await spool.write(header, [head, ...window.frames], this.#coding);
      this.#lossBase = current;
      this.#stats.batchesSpooled++;
      if (this.#unspooled) {
        const { batches, flows } = this.#unspooled;
        this.#unspooled = undefined;
        this.#log(
          "warn",
          `Spooling works again with batch ${sequence}: ${batches} batches (${flows} flows) could not be spooled meanwhile; their loss is reported in spool_evictions`,
        );
      }
      this.#wake?.();
      this.#options.onSpooled?.(number, current);
      if (window.reason === "interval") this.#quietDue = true;
      // With a collector, the send loop is quiet once it has sent this batch.
      if (!this.#sender) this.#announceQuiet();
    } catch (error) {
      this.#stats.batchesLost++;
      const first = this.#unspooled === undefined;
      this.#unspooled ??= { batches: 0, flows: 0 };
      this.#unspooled.batches++;
      this.#unspooled.flows += window.recordCount;
      this.#log(
        first ? "error" : "debug",
        `Cannot spool batch ${sequence ?? "(no sequence)"} of ${window.recordCount} flows: ${
          errorText(error)
        } (the flows are lost, and reported in the next batch's spool_evictions; check the spool directory ${this.#options.spoolDir}${
          first
            ? "; further failures are counted, and a line follows when spooling works again"
            : ""
        })`,
      );
    } finally {
      window.release();
      this.#stats.windowsPending--;
    }
  }

  /**
   * Sends a spooled batch as gzip, for a collector older than zstd support. The spooled file
   * keeps its coding; it is read and recompressed for each attempt.
   */
  async #sendAsGzip(
    sender: Sender,
    entry: SpoolEntry,
    key: string,
    signal: AbortSignal,
  ): Promise<SendResult> {
    // node:zlib (and Node's compatibility layer) loads here, for old collectors only.
    const { compress, decompress } = await import("./compression.ts");
    const plain = await decompress(await Deno.readFile(entry.path), entry.coding, MAX_BATCH_BYTES);
    return sender.send(
      await compress([plain], "gzip", this.#options.gzipLevel),
      "gzip",
      key,
      signal,
    );
  }

  #compressFrame(piece: Uint8Array): Uint8Array {
    return this.#options.compressFrame(
      piece,
      this.#coding,
      this.#options.gzipLevel ?? DEFAULT_GZIP_LEVEL,
    );
  }

  /** Calls a provider; when it throws, logs and falls back to its last good answer. */
  #provide<T>(what: string, provider: () => T, fallback: T | undefined): T {
    try {
      return provider();
    } catch (error) {
      if (fallback === undefined) throw error;
      this.#log(
        "warn",
        `Cannot get the ${what} for a batch: ${errorText(error)} (using the previous one)`,
      );
      return fallback;
    }
  }

  async #runSendLoop(sender: Sender): Promise<void> {
    const spool = await this.#openSpool();
    const signal = this.#abort.signal;
    const pauseSignal = AbortSignal.any([signal, this.#drain.signal]);
    const maxAttempts = this.#options.maxAttempts ?? 5;
    let rounds = 0;
    while (!signal.aborted) {
      const entry = spool.oldest();
      if (!entry) {
        if (this.#drain.signal.aborted) return;
        this.#announceQuiet();
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
        continue;
      }
      try {
        if (!(await spool.lease(entry)) || !entry.header) continue;
        const key = idempotencyKey(entry.header.host.hostname, entry.sequence);
        let result = this.#collectorGzipOnly && entry.coding !== "gzip"
          ? await this.#sendAsGzip(sender, entry, key, signal)
          : await sender.send({ path: entry.path }, entry.coding, key, signal);
        if (result.outcome === "rejected" && result.status === 415 && entry.coding !== "gzip") {
          this.#collectorGzipOnly = true;
          this.#log(
            "warn",
            `Collector ${sender.url} does not accept ${
              BODY_CODINGS[entry.coding].contentEncoding
            } bodies (HTTP 415): sending gzip from now on, each batch recompressed on its way (upgrade the collector, or set compression gzip, to save that CPU)`,
          );
          result = await this.#sendAsGzip(sender, entry, key, signal);
        }
        this.#stats.batchesRetried += Math.max(0, result.attempts - 1);
        switch (result.outcome) {
          case "delivered":
            await spool.remove(entry);
            this.#stats.batchesSent++;
            this.#stats.recordsSent += entry.header.recordCount;
            rounds = 0;
            break;
          case "rejected": {
            const kept = await spool.reject(entry);
            this.#stats.batchesRejected++;
            const check = result.status === 409
              ? "the collector holds other content under this sequence number: check that no other host shares this hostname and that the spool was not restored from a copy"
              : "check the collector's log and the exporter's credentials and version";
            this.#log(
              "error",
              `Collector ${sender.url} refused batch ${key} for good (${result.reason}): kept in ${kept}, not retried (${check})`,
            );
            break;
          }
          case "failed": {
            spool.release(entry);
            this.#stats.batchesFailed++;
            // Shutting down, that was the last round: the batch waits in the spool.
            const last = this.#drain.signal.aborted;
            const pause = sender.backoffMs(maxAttempts + ++rounds);
            this.#log(
              "warn",
              `Cannot deliver batch ${key} after ${result.attempts} attempts (${result.reason}): it stays in the spool, ${
                last ? "for the next start" : `next try in ${pause} ms`
              }`,
            );
            if (last) return;
            await sleep(pause, pauseSignal);
            break;
          }
          case "aborted":
            spool.release(entry);
            return;
        }
      } catch (error) {
        spool.release(entry);
        this.#log(
          "error",
          `Cannot ship batch ${entry.sequence}: ${errorText(error)} (retrying in 1 s)`,
        );
        await sleep(1000, signal);
      }
    }
  }
}

/** The increase of a cumulative counter; one that went down was reset, so counts from 0. */
function increase(previous: bigint, current: bigint): bigint {
  return current >= previous ? current - previous : current;
}
