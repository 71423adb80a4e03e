/**
 * One-line errors for a path a command cannot use: which path, which option sets it (named as a
 * flag, a variable and a config key, from the command's option schema), why in a few words, and
 * what to do, instead of the raw OS error (`Operation not permitted (os error 1): mkdir '…'`).
 *
 * @example
 * ```ts
 * import { withPath } from "./unusable_path.ts";
 * const use = {
 *   what: "spool directory",
 *   option: "--spool-dir / FLOWEXPORTER_SPOOL_DIR / spool_dir",
 *   fix: "choose a writable directory",
 * };
 * withPath(use, "/var/lib/flowexporter/spool", () => Deno.mkdirSync("/var/lib/flowexporter/spool"));
 * // UnusablePathError: Cannot use spool directory /var/lib/flowexporter/spool
 * //   (--spool-dir / FLOWEXPORTER_SPOOL_DIR / spool_dir): permission denied; choose a writable directory
 * ```
 *
 * @module
 */

/** How a command uses a path, for {@linkcode UnusablePathError}'s message. */
export interface PathUse {
  /** What the path is: `spool directory`. */
  readonly what: string;
  /** The option that sets it, every way it can be given: `--spool-dir / FLOWEXPORTER_SPOOL_DIR / spool_dir`. */
  readonly option: string;
  /** What to do: `choose a writable directory`. */
  readonly fix: string;
}

/** A path a command needs cannot be used; the message is one line naming the option. */
export class UnusablePathError extends Error {
  /** The path. */
  readonly path: string;

  /**
   * @param use how the command uses the path
   * @param path the path
   * @param reason why it cannot be used, a few lower-case words
   * @param options standard error options (`cause`: the OS error)
   */
  constructor(use: PathUse, path: string, reason: string, options?: ErrorOptions) {
    super(`Cannot use ${use.what} ${path} (${use.option}): ${reason}; ${use.fix}`, options);
    this.name = "UnusablePathError";
    this.path = path;
  }
}

/**
 * Runs `open` (what makes or reads the path); an OS error it throws, itself or as the `cause` of
 * what it throws, becomes an {@linkcode UnusablePathError}. Other errors pass unchanged.
 *
 * @param use how the command uses the path
 * @param path the path, for the message
 * @param open opens, creates or reads the path
 * @returns what `open` returns
 * @throws {UnusablePathError}
 */
export function withPath<T>(use: PathUse, path: string, open: () => T): T {
  let result: T;
  try {
    result = open();
  } catch (error) {
    throw unusablePath(use, path, error);
  }
  if (!(result instanceof Promise)) return result;
  return result.catch((error) => {
    throw unusablePath(use, path, error);
  }) as T;
}

/**
 * `error` as an {@linkcode UnusablePathError} when it is an OS error or caused by one, else
 * unchanged: for a caller that must tell the errors of several paths apart itself.
 *
 * @param use how the command uses the path
 * @param path the path, for the message
 * @param error what opening it threw
 */
export function unusablePath(use: PathUse, path: string, error: unknown): unknown {
  const problem = osProblem(error);
  return problem === undefined
    ? error
    : new UnusablePathError(use, path, problem, { cause: error });
}

/**
 * Why an OS error happened, in a few lower-case words (`permission denied`, `not a
 * directory`), or undefined for an error that is not an OS error, nor caused by one.
 *
 * @param error what was thrown
 */
export function osProblem(error: unknown): string | undefined {
  const os = osError(error) ?? osError((error as { cause?: unknown } | undefined)?.cause);
  if (os === undefined) return undefined;
  return PROBLEMS[os.code] ??
    // "Some reason (os error N): syscall 'path'" → "some reason"
    os.message.replace(/\s*\(os error \d+\).*$/, "").replace(/^./, (c) => c.toLowerCase());
}

function osError(error: unknown): { code: string; message: string } | undefined {
  if (!(error instanceof Error)) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) {
    return { code, message: error.message };
  }
  // Made by hand (`new Deno.errors.NotFound()`), without the code the runtime gives.
  const byClass = CODES_BY_CLASS[error.name];
  return byClass === undefined ? undefined : { code: byClass, message: error.message };
}

const CODES_BY_CLASS: Record<string, string> = {
  NotFound: "ENOENT",
  PermissionDenied: "EACCES",
  NotADirectory: "ENOTDIR",
  IsADirectory: "EISDIR",
  AlreadyExists: "EEXIST",
};

/** Words for the errors a path gives most. */
const PROBLEMS: Record<string, string> = {
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  ENOTDIR: "not a directory",
  EISDIR: "it is a directory, not a file",
  EEXIST: "a file is in the way",
  EROFS: "read-only file system",
  ENOSPC: "no space left on the file system",
  ELOOP: "too many symbolic links",
  ENAMETOOLONG: "the name is too long",
};
