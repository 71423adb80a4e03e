/**
 * The host's own workload identity (the EC2 path): read from an X.509 identity certificate on
 * local disk, and read again whenever the certificate rotates. The agent writes the resulting
 * workload ID into the BPF side, which uses it for sockets no port or IP entry claims.
 *
 * The agent does not verify the certificate's chain: the file's permissions are the trust
 * boundary. It only checks the validity period and takes the workload ID from the URI SAN or
 * the subject CN.
 *
 * @example
 * ```ts
 * import { HostIdentityWatcher } from "./host_identity.ts";
 * using watcher = await HostIdentityWatcher.start({
 *   path: "/etc/flowexporter/identity.pem",
 *   onChange: (identity) => console.log("host workload is now", identity.workloadId),
 * });
 * console.log(watcher.current()); // { workloadId: "spiffe://…", source: "certificate", … }
 * ```
 *
 * @module
 */

import { errorText } from "../lib/error_text.ts";

/** Where the agent looks for the host identity certificate unless told otherwise. */
export const DEFAULT_CERT_PATH = "/etc/flowexporter/identity.pem";

/** The rules for taking a workload ID from a certificate. */
export const ID_RULES = ["uri-san", "cn", "uri-san-then-cn"] as const;

/**
 * How the workload ID is taken from the certificate: its single URI SAN (`uri-san`), its
 * subject CN (`cn`), or the URI SAN when there is one and the CN otherwise (`uri-san-then-cn`).
 */
export type IdRule = typeof ID_RULES[number];

/** The rule used unless told otherwise. */
export const DEFAULT_ID_RULE: IdRule = "uri-san-then-cn";

/** How often the watcher re-reads the certificate when no file event arrives, by default. */
export const DEFAULT_POLL_INTERVAL_MS = 60_000;

/**
 * Parses an `IdRule` from flag text.
 *
 * @throws {TypeError} `Invalid identity rule "x" (use uri-san, cn or uri-san-then-cn)`.
 */
export function parseIdRule(text: string): IdRule {
  const rule = ID_RULES.find((r) => r === text);
  if (!rule) {
    throw new TypeError(
      `Invalid identity rule ${JSON.stringify(text)} (use uri-san, cn or uri-san-then-cn)`,
    );
  }
  return rule;
}

/** A certificate that cannot give a workload ID: unreadable, malformed, out of date or nameless. */
export class CertificateError extends Error {
  /** What is wrong, e.g. `expired at 2026-01-01T00:00:00.000Z (renew it)`. */
  readonly reason: string;
  /** The file, when the certificate came from one. */
  readonly path?: string;

  /** Creates the error; the message is `Cannot use certificate <path>: <reason>`. */
  constructor(reason: string, path?: string, options?: ErrorOptions) {
    super(`Cannot use certificate${path === undefined ? "" : ` ${path}`}: ${reason}`, options);
    this.name = "CertificateError";
    this.reason = reason;
    this.path = path;
  }
}

/** What a valid certificate says about the workload. */
export interface CertificateIdentity {
  /** The workload ID, already checked against the map layout (≤ 127 bytes, printable). */
  workloadId: string;
  /** Which name it came from. */
  from: "uri-san" | "cn";
  /** Subject on one line, e.g. `O=Acme, CN=web-1`. */
  subject: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 fingerprint, colon-separated hex. */
  fingerprint256: string;
}

/** Options for reading a certificate. */
export interface CertificateOptions {
  /** Default `uri-san-then-cn`. */
  rule?: IdRule;
  /** The time validity is checked against; default now. */
  now?: Date;
}

/**
 * Reads a certificate file and takes the workload ID from it (see `certificateIdentity` in
 * certificate.ts).
 *
 * @throws {CertificateError} also when the file cannot be read.
 */
export async function readCertificateIdentity(
  path: string,
  options: CertificateOptions = {},
): Promise<CertificateIdentity> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (cause) {
    throw new CertificateError(readProblem(cause), path, { cause });
  }
  // X.509 parsing (node:crypto, and Node's compatibility layer with it) loads with the first
  // certificate: a host without one does not hold it.
  const { certificateIdentity } = await import("./certificate.ts");
  return certificateIdentity(bytes, options, path);
}

/** The host identity as the agent currently uses it. */
export interface HostIdentity {
  /** The workload ID; "" when unknown. */
  workloadId: string;
  source: "certificate" | "unknown";
  /** End of the certificate's validity period. */
  notAfter?: Date;
  /** The certificate's subject on one line. */
  subject?: string;
}

/** Options for `HostIdentityWatcher.start`. */
export interface HostIdentityWatcherOptions {
  /** Certificate file; default `DEFAULT_CERT_PATH`. */
  path?: string;
  /** Default `uri-san-then-cn`. */
  rule?: IdRule;
  /**
   * Called after the workload ID changes (not for the first read: use `current()` after
   * `start`). Errors it throws are logged.
   */
  onChange?: (identity: HostIdentity) => void;
  /** Receives one-line messages; default `console.error`. */
  log?: (line: string) => void;
  /** Clock for validity checks; default `() => new Date()`. */
  now?: () => Date;
  /** Re-read interval when no file event arrives; 0 disables polling. Default 60 s. */
  pollIntervalMs?: number;
  /** Wait this long after the last file event before reading (rotations touch files several times). */
  debounceMs?: number;
}

const UNKNOWN: HostIdentity = Object.freeze({ workloadId: "", source: "unknown" });

/**
 * Keeps the host identity from the certificate file current. It watches the file (in-place
 * rewrites, bind mounts) and its directory (rename-over rotation, Kubernetes-style symlink
 * swaps), and polls as a fallback. A missing, malformed, expired or not-yet-valid certificate
 * gives one log line and leaves the last good identity in place ("unknown" if there never was
 * one). It never throws after `start`.
 */
export class HostIdentityWatcher implements Disposable {
  /** The certificate file. */
  readonly path: string;
  /** The rule in use. */
  readonly rule: IdRule;
  #identity: HostIdentity = UNKNOWN;
  #onChange?: (identity: HostIdentity) => void;
  #log: (line: string) => void;
  #now: () => Date;
  #debounceMs: number;
  #lastLine = "";
  #closed = false;
  #queued: Promise<void> | null = null;
  #tail: Promise<void> = Promise.resolve();
  #debounce?: ReturnType<typeof setTimeout>;
  #poll?: ReturnType<typeof setInterval>;
  #dirWatch: Watch | null = null;
  #fileWatch: Watch | null = null;

  private constructor(options: HostIdentityWatcherOptions) {
    this.path = options.path ?? DEFAULT_CERT_PATH;
    this.rule = options.rule ?? DEFAULT_ID_RULE;
    this.#log = options.log ?? ((line) => console.error(line));
    this.#now = options.now ?? (() => new Date());
    this.#debounceMs = options.debounceMs ?? 200;
    const poll = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
    if (poll > 0) {
      const timer = setInterval(() => void this.reload(), poll);
      Deno.unrefTimer(timer);
      this.#poll = timer;
    }
  }

  /** Reads the certificate once, starts watching, and resolves with the watcher. */
  static async start(options: HostIdentityWatcherOptions = {}): Promise<HostIdentityWatcher> {
    const watcher = new HostIdentityWatcher(options);
    await watcher.reload();
    watcher.#onChange = options.onChange; // from here on: the first read is `current()`
    return watcher;
  }

  /** The identity in use now. */
  current(): HostIdentity {
    return this.#identity;
  }

  /**
   * Re-reads the certificate now (e.g. on SIGHUP). Reads never overlap; calls made while one is
   * waiting share it. Never rejects.
   */
  reload(): Promise<void> {
    if (!this.#queued) {
      const run = this.#tail.then(() => {
        this.#queued = null;
        return this.#load();
      });
      this.#queued = run;
      this.#tail = run;
    }
    return this.#queued;
  }

  /** Stops watching and polling. Safe to call more than once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    closeWatcher(this.#dirWatch?.watcher);
    closeWatcher(this.#fileWatch?.watcher);
    this.#dirWatch = this.#fileWatch = null;
  }

  /** Same as `close()`. */
  [Symbol.dispose](): void {
    this.close();
  }

  async #load(): Promise<void> {
    if (this.#closed) return;
    try {
      const found = await readCertificateIdentity(this.path, { rule: this.rule, now: this.#now() });
      if (!this.#closed) this.#accept(found);
    } catch (error) {
      if (!this.#closed) this.#reject(error);
    }
    if (!this.#closed) await this.#watch();
  }

  #accept(found: CertificateIdentity): void {
    const previous = this.#identity;
    this.#identity = Object.freeze({
      workloadId: found.workloadId,
      source: "certificate",
      notAfter: found.notAfter,
      subject: found.subject,
    });
    // The kernel's copy first, then the log line: once it says so, new flows carry it.
    if (previous.workloadId !== found.workloadId) {
      try {
        this.#onChange?.(this.#identity);
      } catch (error) {
        this.#say(`Host identity change handler failed: ${errorText(error)}`);
      }
    }
    this.#say(
      `Host identity is ${JSON.stringify(found.workloadId)} (${
        found.from === "uri-san" ? "URI SAN" : "subject CN"
      } of ${this.path}, subject ${
        JSON.stringify(found.subject)
      }, valid until ${found.notAfter.toISOString()})`,
    );
  }

  #reject(error: unknown): void {
    const problem = error instanceof CertificateError
      ? error.message
      : `Cannot use certificate ${this.path}: ${errorText(error)}`;
    const kept = this.#identity.source === "certificate"
      ? `keeping workload ID ${JSON.stringify(this.#identity.workloadId)}`
      : "the host identity stays unknown";
    this.#say(`${problem}; ${kept}`);
  }

  /** Logs a line unless it repeats the previous one (polling would repeat it every interval). */
  #say(text: string): void {
    const line = text.replace(/\s*[\r\n]+\s*/g, " "); // error texts from elsewhere stay on one line
    if (line === this.#lastLine) return;
    this.#lastLine = line;
    try {
      this.#log(line);
    } catch {
      // A broken logger must not stop the watcher.
    }
  }

  /** (Re)creates the watchers that are missing or stale (the file was replaced). */
  async #watch(): Promise<void> {
    this.#dirWatch ??= this.#tryWatch(directoryOf(this.path), null);
    let ino: number | null = null;
    try {
      ino = (await Deno.stat(this.path)).ino;
    } catch {
      // Missing: the directory watcher or the poll will see it appear.
    }
    const stale = this.#fileWatch;
    if (this.#closed || (stale && stale.ino === ino)) return;
    if (stale) {
      // Deno unwatches a closed watcher's path only once its iterator has ended; a new watcher
      // on the same path created before that would be unwatched with it.
      this.#fileWatch = null;
      closeWatcher(stale.watcher);
      await settled(stale.done, 1000); // bounded: a stuck iterator must not stall every reload
    }
    if (ino !== null && !this.#closed) this.#fileWatch = this.#tryWatch(this.path, ino);
  }

  #tryWatch(path: string, ino: number | null): Watch | null {
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(path, { recursive: false });
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        this.#say(`Cannot watch ${path}: ${errorText(error)}; relying on polling`);
      }
      return null;
    }
    const watch: Watch = { watcher, ino, done: Promise.resolve() };
    watch.done = this.#pump(watch, path);
    return watch;
  }

  async #pump(watch: Watch, path: string): Promise<void> {
    try {
      for await (const _event of watch.watcher) this.#schedule();
    } catch (error) {
      if (!this.#closed) this.#say(`Stopped watching ${path}: ${errorText(error)}`);
    }
    if (this.#dirWatch === watch) this.#dirWatch = null;
    if (this.#fileWatch === watch) this.#fileWatch = null;
  }

  #schedule(): void {
    if (this.#closed) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.reload(), this.#debounceMs);
  }
}

/** The directory holding `path` (node:path's `dirname` for the paths a flag gives). */
function directoryOf(path: string): string {
  const at = path.replace(/\/+$/, "").lastIndexOf("/");
  return at < 0 ? "." : at === 0 ? "/" : path.slice(0, at);
}

function readProblem(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) {
    return "no such file (install the certificate there or set --cert-path)";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied (let the agent read it)";
  }
  if (error instanceof Deno.errors.IsADirectory) return "it is a directory, not a file";
  return `cannot read it (${errorText(error)})`;
}

/** A running file-system watcher; `ino` is the inode a file watcher was set on. */
interface Watch {
  watcher: Deno.FsWatcher;
  ino: number | null;
  done: Promise<void>;
}

/** Waits for `promise`, or at most `ms`. */
async function settled(promise: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([promise, new Promise((resolve) => timer = setTimeout(resolve, ms))]);
  clearTimeout(timer);
}

function closeWatcher(watcher: Deno.FsWatcher | undefined): void {
  try {
    watcher?.close();
  } catch {
    // Already closed.
  }
}
