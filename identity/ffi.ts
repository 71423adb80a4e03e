/**
 * identity/'s one door to the native boundary: the pinned identity maps a running agent
 * created, opened through the bpf() syscall. Everything else in identity/ works on the
 * {@linkcode IdentityMaps} interface, so that it runs (and is tested) without a kernel.
 *
 * @module
 */
import type { IdentityMaps } from "../lib/map_layout.ts";

/** Opens the pinned maps a running agent created: `(pinDir = MAPS_PIN_DIR) => IdentityMaps`. */
export { openPinnedMaps } from "../ffi/bpf_map.ts";
export type { IdentityMaps };
