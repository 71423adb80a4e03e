/**
 * The C ABI of `libflowexporter.so` (ffi/flowexporter.c) and how to find it.
 *
 * Load order: `FLOWEXPORTER_LIB` from the environment, then the local build
 * output (`build/libflowexporter.so`), then the copy embedded in a compiled
 * binary (extracted by ffi/embedded.ts).
 *
 * @module
 */

import { RECORD_SIZE, RECORD_VERSION } from "../lib/decode.ts";
import { errorText } from "../lib/error_text.ts";
import { embeddedLibrary } from "./embedded.ts";

/** ABI version this binding speaks; the library must report the same. */
export const ABI_VERSION = 9;

/** `fe_poll`, declared twice below: waiting on Deno's blocking pool, and not waiting. */
const FE_POLL = {
  parameters: ["pointer", "i32", "buffer", "u32", "buffer"],
  result: "i32",
} as const;

/** The library's symbol table, with each function's C prototype. */
export const SYMBOLS = {
  // uint32_t fe_abi_version(void)
  fe_abi_version: { parameters: [], result: "u32" },
  // uint32_t fe_record_size(void)
  fe_record_size: { parameters: [], result: "u32" },
  // uint32_t fe_record_version(void)
  fe_record_version: { parameters: [], result: "u32" },
  // uint32_t fe_state_version(void)
  fe_state_version: { parameters: [], result: "u32" },
  // int fe_record_offsets(uint32_t *out, uint32_t n)
  fe_record_offsets: { parameters: ["buffer", "u32"], result: "i32" },
  // int fe_log_read(char *buf, uint32_t cap)
  fe_log_read: { parameters: ["buffer", "u32"], result: "i32" },
  // int fe_error_read(char *buf, uint32_t cap)
  fe_error_read: { parameters: ["buffer", "u32"], result: "i32" },
  // uint32_t fe_probe(void)
  fe_probe: { parameters: [], result: "u32" },
  // int fe_open(const char *pin_dir, const char *cgroup_path, uint32_t options,
  //             uint32_t ring_bytes, uint32_t flows_max, uint32_t wakeup_bytes,
  //             struct fe_agent **out)
  fe_open: {
    parameters: ["buffer", "buffer", "u32", "u32", "u32", "u32", "buffer"],
    result: "i32",
  },
  // int fe_poll(struct fe_agent *a, int timeout_ms, uint8_t *buf, uint32_t cap,
  //             uint64_t *pos)  [blocks up to timeout_ms]
  fe_poll: { ...FE_POLL, nonblocking: true },
  // fe_poll with a timeout of 0, which does not wait: called on the caller's thread, since a hop
  // to the blocking pool and back costs two thread switches and does nothing else
  fe_poll_now: { ...FE_POLL, name: "fe_poll" },
  // int fe_commit(struct fe_agent *a, uint64_t pos)
  fe_commit: { parameters: ["pointer", "u64"], result: "i32" },
  // int64_t fe_follow_check(struct fe_agent *a)  [blocks: walks every task's descriptors, about
  //   7 ms per 10 000 sockets (docs/benchmarks.md)]
  fe_follow_check: { parameters: ["pointer"], result: "i64", nonblocking: true },
  // int64_t fe_sweep(struct fe_agent *a)  [blocks: walks the flow states]
  fe_sweep: { parameters: ["pointer"], result: "i64", nonblocking: true },
  // int fe_stats(struct fe_agent *a, uint64_t *out, uint32_t n)
  fe_stats: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // int fe_map_fd(struct fe_agent *a, const char *name)
  fe_map_fd: { parameters: ["pointer", "buffer"], result: "i32" },
  // int fe_snapshot_begin(struct fe_agent *a, uint64_t min_age_ns)
  fe_snapshot_begin: { parameters: ["pointer", "u64"], result: "i32" },
  // int fe_snapshot_read(struct fe_agent *a, uint8_t *buf, uint32_t cap)  [blocks: the kernel
  //   walks the sockets, about 2 ms per 1000 (docs/benchmarks.md)]
  fe_snapshot_read: {
    parameters: ["pointer", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // void fe_snapshot_end(struct fe_agent *a)
  fe_snapshot_end: { parameters: ["pointer"], result: "void" },
  // void fe_close(struct fe_agent *a)
  fe_close: { parameters: ["pointer"], result: "void" },
  // int fe_retiring_open(const char *capdir, uint32_t wait_ms, struct fe_retiring **out)  [blocks:
  //   up to wait_ms, while the kernel releases the old programs]
  fe_retiring_open: { parameters: ["buffer", "u32", "buffer"], result: "i32" },
  // int fe_retiring_read(struct fe_retiring *r, uint8_t *buf, uint32_t cap, uint64_t *pos)
  fe_retiring_read: { parameters: ["pointer", "buffer", "u32", "buffer"], result: "i32" },
  // int fe_retiring_commit(struct fe_retiring *r, uint64_t pos)
  fe_retiring_commit: { parameters: ["pointer", "u64"], result: "i32" },
  // int fe_retiring_stats(struct fe_retiring *r, uint64_t *out, uint32_t n)
  fe_retiring_stats: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // void fe_retiring_close(struct fe_retiring *r)
  fe_retiring_close: { parameters: ["pointer"], result: "void" },
  // int64_t fe_clock_offset(uint32_t clock, int64_t *offset_ns)
  fe_clock_offset: { parameters: ["u32", "buffer"], result: "i64" },
  // int fe_map_open_pinned(const char *path)
  fe_map_open_pinned: { parameters: ["buffer"], result: "i32" },
  // int fe_map_info(int fd, uint32_t *out /* type, key size, value size, max entries */)
  fe_map_info: { parameters: ["i32", "buffer"], result: "i32" },
  // int fe_map_lookup(int fd, const void *key, void *value)
  fe_map_lookup: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int fe_map_update(int fd, const void *key, const void *value, uint64_t flags)
  fe_map_update: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  // int fe_map_delete(int fd, const void *key)
  fe_map_delete: { parameters: ["i32", "buffer"], result: "i32" },
  // int fe_map_next_key(int fd, const void *key /* NULL: first */, void *next)
  fe_map_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int fe_map_count(int fd, uint32_t key_size)
  fe_map_count: { parameters: ["i32", "u32"], result: "i32" },
  // int fe_mount(const char *fstype, const char *target)
  fe_mount: { parameters: ["buffer", "buffer"], result: "i32" },
  // int fe_release_idle_memory(void)
  fe_release_idle_memory: { parameters: [], result: "i32" },
  // int64_t fe_release_executable_pages(void)
  fe_release_executable_pages: { parameters: [], result: "i64" },
  // int fe_fd_close(int fd)
  fe_fd_close: { parameters: ["i32"], result: "i32" },
  // uint64_t fe_zstd_bound(uint64_t len)
  fe_zstd_bound: { parameters: ["u64"], result: "u64" },
  // int64_t fe_zstd_frame(const uint8_t *src, uint64_t len, uint8_t *dst, uint64_t cap, int32_t level)
  fe_zstd_frame: { parameters: ["buffer", "u64", "buffer", "u64", "i32"], result: "i64" },
  // uint32_t fe_encode_flows(const uint8_t *records, uint32_t count, const uint8_t *boot_id,
  //   int64_t clock_offset_ns, const uint8_t *end_codes, uint32_t states, uint32_t sources,
  //   uint32_t directions, uint32_t open_end, uint32_t interim_kind, uint8_t *out, uint32_t used,
  //   uint32_t cap, uint32_t room, uint32_t *ends)
  fe_encode_flows: {
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "i64",
      "buffer",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "buffer",
      "u32",
      "u32",
      "u32",
      "buffer",
    ],
    result: "u32",
  },
  // uint64_t fe_gzip_bound(uint64_t len, int32_t level)
  fe_gzip_bound: { parameters: ["u64", "i32"], result: "u64" },
  // int64_t fe_gzip_member(const uint8_t *src, uint64_t len, uint8_t *dst, uint64_t cap, int32_t level)
  fe_gzip_member: { parameters: ["buffer", "u64", "buffer", "u64", "i32"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library's functions. */
export type Native = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** fe_open() option bits. */
export const OpenOption = {
  perfBuffer: 1 << 0,
  noPin: 1 << 1,
  noSeed: 1 << 2,
  verbose: 1 << 3,
} as const;

/** fe_stats() indices. */
export const Stat = {
  kernelDrops: 0,
  recursionMisses: 1,
  perfLost: 2,
  flowsMax: 3,
  transport: 4,
  sockops: 5,
  clock: 6,
  seeded: 7,
  resumed: 8,
  ringId: 9,
  ringConsumed: 10,
  ringProduced: 11,
  ringWaiting: 12,
  stateTracepoint: 13,
  unfollowed: 14,
  unfollowedAtDestroy: 15,
  swept: 16,
  sweptStale: 17,
  count: 18,
} as const;

/** fe_retiring_stats() indices. */
export const RetiringStat = {
  ringId: 0,
  foreign: 1,
  unreportedDrops: 2,
  consumed: 3,
  count: 4,
} as const;

/** fe_probe() bits: what the running kernel offers. */
export const Probe = {
  btf: 1 << 0,
  tpBtf: 1 << 1,
  ringbuf: 1 << 2,
  bootNs: 1 << 3,
  iterTcp: 1 << 4,
  sockops: 1 << 5,
  sockopsFollow: 1 << 6,
  mapWalk: 1 << 7,
} as const;

/** Raised when the shared object cannot be found, loaded or is of another ABI. */
export class NativeLoadError extends Error {
  override name = "NativeLoadError";
}

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` for `const char *` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(encoder.encode(s).length + 1);
  encoder.encodeInto(s, bytes);
  return bytes;
}

/** Candidate paths of the shared object, in load order. */
export function libraryCandidates(): string[] {
  const explicit = Deno.env.get("FLOWEXPORTER_LIB");
  if (explicit) return [explicit];
  const local = new URL("../build/libflowexporter.so", import.meta.url).pathname;
  // In a compiled binary that path lies in the virtual file system's root under /tmp: never
  // load from there.
  if (!Deno.build.standalone && isFile(local)) return [local];
  const embedded = embeddedLibrary();
  return embedded ? [embedded] : [local];
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

let loaded: { lib: Deno.DynamicLibrary<typeof SYMBOLS>; path: string } | undefined;

/**
 * Opens the shared object once per isolate and checks its ABI version.
 *
 * @param paths where to look, in order (default: {@linkcode libraryCandidates})
 * @returns the library's functions
 */
export function openNative(paths: string[] = libraryCandidates()): Native {
  if (loaded) return loaded.lib.symbols;
  const errors: string[] = [];
  for (const path of paths) {
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (cause) {
      errors.push(`${path}: ${errorText(cause)}`);
      continue;
    }
    const abi = lib.symbols.fe_abi_version();
    const record = abi === ABI_VERSION
      ? { size: lib.symbols.fe_record_size(), version: lib.symbols.fe_record_version() }
      : undefined;
    const mismatch = abi !== ABI_VERSION
      ? `ABI version ${abi}, this agent speaks ${ABI_VERSION}`
      : record!.size !== RECORD_SIZE || record!.version !== RECORD_VERSION
      ? `flow record version ${record!.version} of ${
        record!.size
      } bytes, this agent decodes version ${RECORD_VERSION} of ${RECORD_SIZE}`
      : undefined;
    if (mismatch) {
      lib.close();
      throw new NativeLoadError(`Cannot use ${path}: ${mismatch} (rebuild with make)`);
    }
    loaded = { lib, path };
    return lib.symbols;
  }
  throw new NativeLoadError(
    `Cannot load libflowexporter.so (run make build, or set FLOWEXPORTER_LIB): ${
      errors.join("; ")
    }`,
  );
}

/** Path of the shared object {@linkcode openNative} loaded (for workers to load the same). */
export function nativePath(): string | undefined {
  return loaded?.path;
}

/** The libbpf log the shim collected (verifier output after a failed load). */
export function nativeLog(native: Native): string {
  const buf = new Uint8Array(16384);
  const n = native.fe_log_read(buf, buf.length);
  return new TextDecoder().decode(buf.subarray(0, n));
}

/** The step of fe_open() that failed, with the kernel's reason ("" when none failed). */
export function nativeError(native: Native): string {
  const buf = new Uint8Array(512);
  const n = native.fe_error_read(buf, buf.length);
  return new TextDecoder().decode(buf.subarray(0, n));
}
