/**
 * The shared object embedded in a compiled binary (`make dist`, docs/packaging.md):
 * `deno compile --include` puts `build/<arch>/libflowexporter.so` and its
 * SHA-256 (`libflowexporter.so.sha256`, written at build time) into the binary's
 * read-only virtual file system. The dynamic loader cannot read from there, so
 * the bytes are copied to an anonymous sealed memory file (memfd, loaded as
 * `/proc/self/fd/N`) or, where that is refused, to a private runtime directory.
 * The copy is verified against the recorded checksum before anyone dlopens it.
 *
 * @module
 */
import { sha256Hex } from "../lib/sha256.ts";
import { errorText } from "../lib/error_text.ts";

/** The library's file name, in the asset directory and in sha256sum's manifest. */
const LIB_NAME = "libflowexporter.so";

/** Raised when the embedded library is damaged or cannot be extracted safely. */
export class EmbeddedLibraryError extends Error {
  override name = "EmbeddedLibraryError";
}

/** Where {@linkcode embeddedLibrary} finds the asset and puts the copy. */
export interface EmbeddedOptions {
  /**
   * Directory holding `libflowexporter.so` and `libflowexporter.so.sha256`
   * (default: `build/<amd64|arm64>/` beside the sources, which in a compiled
   * binary is inside its virtual file system).
   */
  assetDir?: string;
  /** Try an anonymous memory file first (default true). */
  memfd?: boolean;
  /**
   * Private directory for the copy when memfd is not used (default:
   * `$RUNTIME_DIRECTORY` from systemd, else `/run/flowexporter` as root, else
   * `$XDG_RUNTIME_DIR/flowexporter`). Created 0700; an existing one must belong
   * to this user.
   */
  runtimeDir?: string;
}

let extracted: string | null | undefined;

/**
 * Extracts the embedded shared object and returns a path to dlopen, or null
 * when there is no embedded asset (not a compiled binary, or one built
 * without `--include`). The copy's SHA-256 matches the checksum recorded at
 * build time when this returns. Without options the result is computed once
 * per isolate.
 *
 * @example
 * ```ts
 * const path = embeddedLibrary(); // "/proc/self/fd/7" in a compiled binary
 * if (path) Deno.dlopen(path, SYMBOLS);
 * ```
 *
 * @param options where to look and extract (for tests; production uses the defaults)
 * @returns `/proc/self/fd/N` (memfd) or a file in the runtime directory; null without an asset
 * @throws {EmbeddedLibraryError} on a checksum mismatch or an unsafe runtime directory
 */
export function embeddedLibrary(options?: EmbeddedOptions): string | null {
  if (options) return extract(options);
  if (extracted === undefined) extracted = extract({});
  return extracted;
}

function extract(options: EmbeddedOptions): string | null {
  const dir = options.assetDir ?? defaultAssetDir();
  const manifestPath = `${dir}/${LIB_NAME}.sha256`;
  let manifest: string;
  try {
    manifest = Deno.readTextFileSync(manifestPath);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const expected = parseManifest(manifestPath, manifest);
  const bytes = Deno.readFileSync(`${dir}/${LIB_NAME}`);
  const actual = sha256Hex(bytes);
  if (actual !== expected) {
    throw new EmbeddedLibraryError(
      `Cannot use the embedded ${LIB_NAME}: its SHA-256 ${actual} differs from ${expected} recorded at build time (the binary is damaged: rebuild it with make dist)`,
    );
  }
  if (options.memfd ?? true) {
    const path = toMemfd(bytes, expected);
    if (path) return path;
  }
  return toRuntimeDir(bytes, expected, options.runtimeDir ?? defaultRuntimeDir());
}

/** The asset directory a compiled binary has: `--include build/<arch>/…` of `make dist`. */
function defaultAssetDir(): string {
  const arch = Deno.build.arch === "aarch64" ? "arm64" : "amd64";
  // A URL, not string concatenation: the compiled binary's file system does not resolve "..".
  return new URL(`../build/${arch}`, import.meta.url).pathname;
}

function defaultRuntimeDir(): string {
  const systemd = Deno.env.get("RUNTIME_DIRECTORY")?.split(":")[0];
  if (systemd) return systemd;
  if (Deno.uid() === 0) return "/run/flowexporter";
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  if (xdg) return `${xdg}/flowexporter`;
  throw new EmbeddedLibraryError(
    `Cannot choose a directory to extract ${LIB_NAME} into: neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR is set (set one to a private directory)`,
  );
}

function parseManifest(path: string, text: string): string {
  const match = /^([0-9a-f]{64}) [ *](\S+)\n?$/.exec(text);
  if (!match || match[2] !== LIB_NAME) {
    throw new EmbeddedLibraryError(
      `Cannot read the checksum manifest ${path}: expected one sha256sum line for ${LIB_NAME} (rebuild with make dist)`,
    );
  }
  return match[1];
}

function refuseCopy(where: string, actual: string, expected: string): EmbeddedLibraryError {
  return new EmbeddedLibraryError(
    `Cannot use the extracted ${LIB_NAME} at ${where}: its SHA-256 ${actual} differs from ${expected} recorded at build time (something changed it after extraction)`,
  );
}

// memfd_create(2) and fcntl(2) flags from <linux/memfd.h> and <linux/fcntl.h>.
const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;
const MFD_EXEC = 0x10;
const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 0x1;
const F_SEAL_SHRINK = 0x2;
const F_SEAL_GROW = 0x4;
const F_SEAL_WRITE = 0x8;

/**
 * Copies `bytes` into a sealed memfd and returns its /proc/self/fd path, or
 * null when the kernel or libc refuses (the caller falls back to a directory).
 * The sealed file cannot change, so the verified bytes are the loaded bytes.
 */
function toMemfd(bytes: Uint8Array, expected: string): string | null {
  let libc;
  try {
    libc = Deno.dlopen("libc.so.6", {
      memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
      fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
    });
  } catch {
    return null; // not glibc
  }
  try {
    const name = new TextEncoder().encode(`${LIB_NAME}\0`);
    const flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3+) keeps the memfd executable where vm.memfd_noexec would not;
    // older kernels reject the unknown flag, so retry without it.
    let fd = libc.symbols.memfd_create(name, flags | MFD_EXEC);
    if (fd < 0) fd = libc.symbols.memfd_create(name, flags);
    if (fd < 0) return null;
    const path = `/proc/self/fd/${fd}`;
    try {
      using file = Deno.openSync(path, { write: true });
      writeAll(file, bytes);
    } catch {
      libc.symbols.close(fd);
      return null;
    }
    const seals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
    if (libc.symbols.fcntl(fd, F_ADD_SEALS, seals) !== 0) {
      libc.symbols.close(fd);
      return null;
    }
    const actual = sha256Hex(Deno.readFileSync(path));
    if (actual !== expected) {
      libc.symbols.close(fd);
      throw refuseCopy(path, actual, expected);
    }
    // A kernel may forbid mapping memfds executable (vm.memfd_noexec, LSMs): find out now,
    // while the directory fallback is still possible. glibc keeps one load per path.
    try {
      Deno.dlopen(path, {}).close();
    } catch {
      libc.symbols.close(fd);
      return null;
    }
    return path;
  } finally {
    libc.close();
  }
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) off += file.writeSync(bytes.subarray(off));
}

/**
 * Copies `bytes` to `<dir>/libflowexporter-<sha>.so` (0500) unless a verified
 * copy of ours is already there. The directory is created 0700 or must already
 * belong to this user; a new copy is written under a fresh O_EXCL name and
 * renamed over whatever held the final name, then verified.
 */
function toRuntimeDir(bytes: Uint8Array, expected: string, dir: string): string {
  privateDir(dir);
  const path = `${dir}/libflowexporter-${expected.slice(0, 16)}.so`;
  if (trustedCopy(path) === expected) return path;
  const tmp = `${dir}/.${LIB_NAME}.${crypto.randomUUID()}`;
  try {
    using file = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o600 });
    writeAll(file, bytes);
    Deno.chmodSync(tmp, 0o500);
    Deno.renameSync(tmp, path);
  } catch (err) {
    try {
      Deno.removeSync(tmp);
    } catch {
      // Never created, or already renamed.
    }
    const why = errorText(err);
    throw new EmbeddedLibraryError(
      `Cannot extract ${LIB_NAME} to ${dir}: ${why} (free the directory or set RUNTIME_DIRECTORY)`,
      { cause: err },
    );
  }
  const actual = trustedCopy(path);
  if (actual !== expected) throw refuseCopy(path, actual ?? "unreadable", expected);
  return path;
}

/** Makes sure `dir` is a directory only this user can write to (creating it 0700). */
function privateDir(dir: string): void {
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) {
      const why = errorText(err);
      throw new EmbeddedLibraryError(
        `Cannot create the runtime directory ${dir}: ${why} (set RUNTIME_DIRECTORY to a private directory)`,
        { cause: err },
      );
    }
  }
  const info = Deno.lstatSync(dir);
  if (!info.isDirectory || info.uid !== Deno.uid()) {
    const what = info.isDirectory ? `it belongs to uid ${info.uid}` : "it is not a directory";
    throw new EmbeddedLibraryError(
      `Cannot extract ${LIB_NAME} to ${dir}: ${what}, not to this user (uid ${Deno.uid()}) (remove it or set RUNTIME_DIRECTORY)`,
    );
  }
  // Ours but open to others (mkdir's mode is masked by umask; systemd defaults to 0755):
  // close it before anything in it is trusted.
  if ((info.mode! & 0o077) !== 0) Deno.chmodSync(dir, 0o700);
}

/** SHA-256 of `path` if it is a regular file of this user that no one else may write, else null. */
function trustedCopy(path: string): string | null {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return null;
  }
  if (!info.isFile || info.uid !== Deno.uid() || (info.mode! & 0o022) !== 0) return null;
  return sha256Hex(Deno.readFileSync(path));
}
