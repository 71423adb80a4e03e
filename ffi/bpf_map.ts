/**
 * BPF maps by file descriptor: the pinned identity maps (opened by path) and
 * the agent's own maps. Implements identity/'s `BpfMap` over the shim's thin
 * wrappers of the bpf() syscall.
 *
 * @module
 */
import {
  type BpfMap,
  type IdentityMaps,
  IP_WORKLOAD_MAP,
  MAPS_PIN_DIR,
  PORT_WORKLOAD_MAP,
} from "../lib/map_layout.ts";
import { cString, type Native, openNative } from "./symbols.ts";

/** Raised when a map operation fails; the message names the map and the errno. */
export class BpfMapError extends Error {
  override name = "BpfMapError";
}

const ENOENT = 2;
const EACCES = 13;
const EPERM = 1;
const E2BIG = 7;

function describe(errno: number): string {
  switch (errno) {
    case ENOENT:
      return "no such map or entry";
    case EACCES:
    case EPERM:
      return "permission denied (the identity maps are root-only)";
    case E2BIG:
      return "the map is full";
    default:
      return `errno ${errno}`;
  }
}

/** A BPF map by file descriptor; `close()` closes the descriptor. */
export class FdMap implements BpfMap, Disposable {
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly #native: Native;
  #fd: number;

  /** Takes ownership of `fd`. */
  constructor(native: Native, fd: number, name: string) {
    const info = new Uint32Array(4);
    const err = native.fe_map_info(fd, info);
    if (err < 0) {
      native.fe_fd_close(fd);
      throw new BpfMapError(`Cannot inspect BPF map ${name}: ${describe(-err)}`);
    }
    this.#native = native;
    this.#fd = fd;
    this.name = name;
    [, this.keySize, this.valueSize, this.maxEntries] = info;
  }

  /** Opens a pinned map by its bpffs path. */
  static openPinned(path: string, native: Native = openNative()): FdMap {
    const fd = native.fe_map_open_pinned(cString(path));
    if (fd < 0) throw new BpfMapError(`Cannot open pinned BPF map ${path}: ${describe(-fd)}`);
    return new FdMap(native, fd, path);
  }

  lookup(key: Uint8Array): Uint8Array | null {
    const value = new Uint8Array(this.valueSize);
    const err = this.#native.fe_map_lookup(this.#live(), this.#key(key), value);
    if (err === -ENOENT) return null;
    if (err < 0) throw new BpfMapError(`Cannot look up in ${this.name}: ${describe(-err)}`);
    return value;
  }

  update(key: Uint8Array, value: Uint8Array): void {
    if (value.length !== this.valueSize) {
      throw new BpfMapError(
        `Cannot update ${this.name}: value is ${value.length} bytes, not ${this.valueSize}`,
      );
    }
    const err = this.#native.fe_map_update(
      this.#live(),
      this.#key(key),
      value as Uint8Array<ArrayBuffer>,
      0n,
    );
    if (err < 0) throw new BpfMapError(`Cannot update ${this.name}: ${describe(-err)}`);
  }

  delete(key: Uint8Array): boolean {
    const err = this.#native.fe_map_delete(this.#live(), this.#key(key));
    if (err === -ENOENT) return false;
    if (err < 0) throw new BpfMapError(`Cannot delete from ${this.name}: ${describe(-err)}`);
    return true;
  }

  *keys(): Generator<Uint8Array> {
    let prev: Uint8Array<ArrayBuffer> | null = null;
    for (;;) {
      const next = new Uint8Array(this.keySize);
      const err = this.#native.fe_map_next_key(this.#live(), prev, next);
      if (err === -ENOENT) return;
      if (err < 0) throw new BpfMapError(`Cannot list ${this.name}: ${describe(-err)}`);
      yield next;
      prev = next;
    }
  }

  /** Number of entries, counted in C (one call, not one per key). */
  count(): number {
    const n = this.#native.fe_map_count(this.#live(), this.keySize);
    if (n < 0) throw new BpfMapError(`Cannot count ${this.name}: ${describe(-n)}`);
    return n;
  }

  /** Closes the descriptor; safe to call twice. */
  close(): void {
    if (this.#fd < 0) return;
    this.#native.fe_fd_close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #key(key: Uint8Array): Uint8Array<ArrayBuffer> {
    if (key.length !== this.keySize) {
      throw new BpfMapError(
        `Cannot use a ${key.length}-byte key with ${this.name}: keys are ${this.keySize} bytes`,
      );
    }
    return key as Uint8Array<ArrayBuffer>;
  }

  #live(): number {
    if (this.#fd < 0) throw new BpfMapError(`BPF map ${this.name} is closed`);
    return this.#fd;
  }
}

/**
 * Opens the pinned identity maps a running agent created.
 *
 * @param pinDir bpffs directory (default: the agent's default pin directory)
 */
export function openPinnedMaps(pinDir: string = MAPS_PIN_DIR): IdentityMaps {
  const ip = FdMap.openPinned(`${pinDir}/${IP_WORKLOAD_MAP}`);
  try {
    return { ip, port: FdMap.openPinned(`${pinDir}/${PORT_WORKLOAD_MAP}`) };
  } catch (err) {
    ip.close();
    throw err;
  }
}
