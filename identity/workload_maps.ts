/**
 * Reads and writes the pinned identity maps (`ip_workload`, `port_workload`) through an
 * injected `BpfMap`, so the logic runs without a kernel. Every input is validated before the
 * map is touched.
 *
 * @example
 * ```ts
 * import { WorkloadMaps } from "./workload_maps.ts";
 * using maps = new WorkloadMaps(openPinnedMaps()); // openPinnedMaps: see identity/mod.ts
 * maps.setIp("127.0.1.1", "workload-a");
 * maps.setPort("127.0.0.1", 8080, "workload-b");
 * maps.list(); // [{ kind: "port", ip: "127.0.0.1", port: 8080, workload: "workload-b" }, …]
 * ```
 *
 * @module
 */

import {
  decodeIpKey,
  decodePortKey,
  decodeWorkload,
  encodeIpKey,
  encodePortKey,
  encodeWorkload,
  FE_MAPS_VERSION,
  FE_WORKLOAD_ID_LEN,
  formatIp,
  IP_KEY_SIZE,
  IP_WORKLOAD_MAP,
  MapLayoutError,
  PORT_KEY_SIZE,
  PORT_WORKLOAD_MAP,
} from "../lib/map_layout.ts";
import type { BpfMap, IdentityMaps } from "../lib/map_layout.ts";
import { errorText } from "../lib/error_text.ts";

/** One map entry, decoded. `problem` says why the BPF side cannot use it, when it cannot. */
export type WorkloadEntry =
  | { kind: "port"; ip: string; port: number; workload: string; problem?: string }
  | { kind: "ip"; ip: string; workload: string; problem?: string };

/** How full one map is. */
export interface MapFill {
  entries: number;
  maxEntries: number;
}

/**
 * Writes and lists workload identities in the pinned maps. Owns the maps it is given:
 * `close()` closes them.
 */
export class WorkloadMaps implements Disposable {
  #ip: BpfMap;
  #port: BpfMap;
  #closed = false;

  /**
   * @throws {MapLayoutError} when a map's key or value size is not the one of this
   * FE_MAPS_VERSION (the map was made by another flowexporter build).
   */
  constructor(maps: IdentityMaps) {
    checkLayout(IP_WORKLOAD_MAP, maps.ip, IP_KEY_SIZE);
    checkLayout(PORT_WORKLOAD_MAP, maps.port, PORT_KEY_SIZE);
    this.#ip = maps.ip;
    this.#port = maps.port;
  }

  /** Attributes sockets whose local address is `ip` (IPv4 or IPv6) to `workload`. */
  setIp(ip: string | Uint8Array, workload: string): void {
    const key = encodeIpKey(ip);
    write(this.#ip, IP_WORKLOAD_MAP, key, encodeWorkload(workload), formatIp(decodeIpKey(key)));
  }

  /** Removes the entry for `ip`; false when there was none. */
  deleteIp(ip: string | Uint8Array): boolean {
    return this.#ip.delete(encodeIpKey(ip));
  }

  /** Attributes IPv4 sockets bound to (`ipv4`, `port`) to `workload`; wins over an IP entry. */
  setPort(ipv4: string | Uint8Array, port: number, workload: string): void {
    const key = encodePortKey(ipv4, port);
    const where = `${formatIp(key.subarray(0, 4))} port ${port}`;
    write(this.#port, PORT_WORKLOAD_MAP, key, encodeWorkload(workload), where);
  }

  /** Removes the entry for (`ipv4`, `port`); false when there was none. */
  deletePort(ipv4: string | Uint8Array, port: number): boolean {
    return this.#port.delete(encodePortKey(ipv4, port));
  }

  /**
   * Every entry: port entries first (the BPF side looks them up first), then IP entries, each
   * sorted by address and port.
   */
  list(): WorkloadEntry[] {
    const ports: [Uint8Array, WorkloadEntry][] = [];
    for (const key of this.#port.keys()) {
      const value = this.#port.lookup(key);
      if (value) ports.push([key, portEntry(key, value)]); // else deleted since keys()
    }
    const ips: [Uint8Array, WorkloadEntry][] = [];
    for (const key of this.#ip.keys()) {
      const value = this.#ip.lookup(key);
      if (!value) continue;
      const { workload, problem } = workloadOf(value);
      ips.push([key, { kind: "ip", ip: formatIp(decodeIpKey(key)), workload, ...problem }]);
    }
    return [...ports.sort(byKey), ...ips.sort(byKey)].map(([, entry]) => entry);
  }

  /** Entry counts and capacities, for the user to see how close to full each map is. */
  fill(): { ip: MapFill; port: MapFill } {
    return { ip: fillOf(this.#ip), port: fillOf(this.#port) };
  }

  /** Closes both maps. Safe to call more than once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#port.close();
    } finally {
      this.#ip.close();
    }
  }

  /** Same as `close()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function checkLayout(name: string, map: BpfMap, keySize: number): void {
  if (map.keySize === keySize && map.valueSize === FE_WORKLOAD_ID_LEN) return;
  throw new MapLayoutError(
    `Cannot use map ${name}: key ${map.keySize} bytes and value ${map.valueSize} bytes, but ` +
      `FE_MAPS_VERSION ${FE_MAPS_VERSION} has key ${keySize} and value ${FE_WORKLOAD_ID_LEN} ` +
      `(the map was made by another flowexporter build; run the matching agent or remove its pin)`,
  );
}

function write(map: BpfMap, name: string, key: Uint8Array, value: Uint8Array, where: string) {
  try {
    map.update(key, value);
  } catch (cause) {
    throw new Error(
      `Cannot set ${name} entry for ${where}: ${errorText(cause)}${capacityHint(map, name, key)}`,
      { cause },
    );
  }
}

/** When a new key failed to go in, the likely reason is a full map: say how big it is. */
function capacityHint(map: BpfMap, name: string, key: Uint8Array): string {
  try {
    if (map.lookup(key) !== null) return "";
  } catch {
    return "";
  }
  return `; ${name} holds at most ${map.maxEntries} entries (delete stale ones if it is full)`;
}

function portEntry(key: Uint8Array, value: Uint8Array): WorkloadEntry {
  const { workload, problem } = workloadOf(value);
  try {
    const { ip, port } = decodePortKey(key);
    return { kind: "port", ip: formatIp(ip), port, workload, ...problem };
  } catch (error) {
    // Show the entry anyway, with why the BPF lookup cannot match it.
    const { ip, port } = decodePortKey(key.slice().fill(0, 6));
    return { kind: "port", ip: formatIp(ip), port, workload, problem: errorText(error) };
  }
}

/** The value's workload ID, and `{ problem }` when it is not a valid `struct fe_workload`. */
function workloadOf(value: Uint8Array): { workload: string; problem: { problem?: string } } {
  try {
    return { workload: decodeWorkload(value), problem: {} };
  } catch (error) {
    const end = value.indexOf(0);
    const lossy = new TextDecoder().decode(end < 0 ? value : value.subarray(0, end));
    return { workload: lossy, problem: { problem: errorText(error) } };
  }
}

function fillOf(map: BpfMap): MapFill {
  let entries = 0;
  if (map.count) {
    entries = map.count();
  } else {
    for (const _key of map.keys()) entries++;
  }
  return { entries, maxEntries: map.maxEntries };
}

function byKey([a]: [Uint8Array, unknown], [b]: [Uint8Array, unknown]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}
