/**
 * In-memory BpfMap for the identity tests: a hash map with the kernel's size checks and
 * capacity limit, so the pure logic runs without a kernel (kernel tests are separate).
 *
 * @module
 */

import type { BpfMap } from "../lib/map_layout.ts";

/**
 * A handle on a hash map by bytes that behaves like BPF_MAP_TYPE_HASH for update/lookup/delete.
 * `reopen()` gives another handle on the same entries, like opening a pinned map again.
 */
export class FakeBpfMap implements BpfMap {
  /** Number of update/delete calls that reached the map through this handle. */
  writes = 0;
  /** Number of close() calls on this handle. */
  closed = 0;

  constructor(
    readonly keySize: number,
    readonly valueSize: number,
    readonly maxEntries: number,
    readonly entries = new Map<string, [Uint8Array, Uint8Array]>(),
  ) {}

  reopen(): FakeBpfMap {
    return new FakeBpfMap(this.keySize, this.valueSize, this.maxEntries, this.entries);
  }

  lookup(key: Uint8Array): Uint8Array | null {
    this.#check(key, this.keySize);
    return this.entries.get(hex(key))?.[1].slice() ?? null;
  }

  update(key: Uint8Array, value: Uint8Array): void {
    this.#check(key, this.keySize);
    this.#check(value, this.valueSize);
    this.writes++;
    if (!this.entries.has(hex(key)) && this.entries.size >= this.maxEntries) {
      throw new Error("Cannot update map: argument list too long (E2BIG)");
    }
    this.entries.set(hex(key), [key.slice(), value.slice()]);
  }

  delete(key: Uint8Array): boolean {
    this.#check(key, this.keySize);
    this.writes++;
    return this.entries.delete(hex(key));
  }

  *keys(): Iterable<Uint8Array> {
    for (const [key] of this.entries.values()) yield key.slice();
  }

  close(): void {
    this.closed++;
  }

  #check(bytes: Uint8Array, size: number): void {
    if (this.closed) throw new Error("Map is closed");
    if (bytes.length !== size) throw new Error(`Expected ${size} bytes, got ${bytes.length}`);
  }
}

/** The two identity maps with the layout of FE_MAPS_VERSION 1 and small capacities. */
export function fakeIdentityMaps(ipEntries = 16, portEntries = 16) {
  return { ip: new FakeBpfMap(16, 128, ipEntries), port: new FakeBpfMap(8, 128, portEntries) };
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
