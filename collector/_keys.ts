/**
 * Ownership keys: how the collector names an address (and an address and port) in the
 * ownership map and the database. Addresses that mean "this host" (loopback, link-local,
 * unspecified) are scoped to the reporting host, `127.0.0.1%node-a`, because every host has
 * its own; all others are taken to be unique across the hosts reporting to one collector.
 *
 * @module
 */

import { formatIp } from "../lib/map_layout.ts";

/** The key of an address as seen from `host`: `10.0.0.7`, `fd00::7`, `127.0.0.1%node-a`. */
export function ipKey(host: string, ip: Uint8Array): string {
  return ipKeyOfText(host, ip, formatIp(ip));
}

/** {@linkcode ipKey} of `ip` whose text (`formatIp(ip)`) the caller has made already. */
export function ipKeyOfText(host: string, ip: Uint8Array, text: string): string {
  return isHostScoped(ip) ? `${text}%${host}` : text;
}

/** The key of an address and port: `[10.0.0.7]:8080`, `[127.0.0.1%node-a]:22`. */
export function portKey(ipKeyText: string, port: number): string {
  return `[${ipKeyText}]:${port}`;
}

/** True for addresses every host has its own of: loopback, link-local, unspecified. */
export function isHostScoped(ip: Uint8Array): boolean {
  if (ip.length === 4) return isHostScoped4(ip[0], ip[1]);
  for (let i = 0; i < 10; i++) {
    if (ip[i] !== 0) return ip[0] === 0xfe && (ip[1] & 0xc0) === 0x80; // fe80::/10
  }
  if (ip[10] === 0xff && ip[11] === 0xff) return isHostScoped4(ip[12], ip[13]); // ::ffff:a.b.c.d
  if (ip[10] !== 0 || ip[11] !== 0 || ip[12] !== 0 || ip[13] !== 0 || ip[14] !== 0) return false;
  return ip[15] <= 1; // :: and ::1
}

function isHostScoped4(a: number, b: number): boolean {
  return a === 127 || a === 0 || (a === 169 && b === 254);
}
