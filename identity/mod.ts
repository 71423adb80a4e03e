/**
 * Workload identity for flowexporter: the public module other Deno programs (container runtime
 * hooks, host agents) import to write the pinned identity maps, and the agent uses for the
 * host identity certificate. See docs/identity.md.
 *
 * @example
 * ```ts
 * import { openPinnedMaps, WorkloadMaps } from "./mod.ts";
 * using maps = new WorkloadMaps(openPinnedMaps());
 * maps.setIp("10.1.2.3", "spiffe://example.org/ns/shop/sa/cart");
 * // … and on container stop:
 * maps.deleteIp("10.1.2.3");
 * ```
 *
 * @module
 */

export {
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
  MAPS_PIN_DIR,
  parseIp,
  parsePort,
  PORT_KEY_SIZE,
  PORT_WORKLOAD_MAP,
  validateWorkloadId,
} from "../lib/map_layout.ts";
export type { BpfMap, IdentityMaps } from "../lib/map_layout.ts";
export { type MapFill, type WorkloadEntry, WorkloadMaps } from "./workload_maps.ts";
export {
  CertificateError,
  type CertificateIdentity,
  type CertificateOptions,
  DEFAULT_CERT_PATH,
  DEFAULT_ID_RULE,
  DEFAULT_POLL_INTERVAL_MS,
  type HostIdentity,
  HostIdentityWatcher,
  type HostIdentityWatcherOptions,
  ID_RULES,
  type IdRule,
  parseIdRule,
  readCertificateIdentity,
} from "./host_identity.ts";
export { certificateIdentity } from "./certificate.ts";
export { EXIT, IDENTITY_USAGE, runIdentityCommand } from "./cli.ts";
export type { CommandOutput } from "../lib/options.ts";
