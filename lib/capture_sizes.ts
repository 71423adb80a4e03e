/**
 * The default sizes of the kernel side's capture maps. bpf/flowexporter.bpf.c declares the same
 * numbers in its map definitions (the shim resizes the maps to the configured sizes before load);
 * tests/capture_sizes_test.ts holds the two together.
 *
 * @module
 */

/** Default size of the BPF ring buffer `events`, bytes (a power of two): about 31 000 records. */
export const DEFAULT_RING_BYTES = 8 << 20;

/** Default capacity of the per-socket state map `flows`: open sockets tracked at once. */
export const DEFAULT_FLOWS_MAX = 131072;

/**
 * Default step of the kernel's reader wakeups (the BPF program's `wakeup_bytes`): it wakes the
 * reader each time the bytes waiting in the ring buffer cross a multiple of it; below the first,
 * the poll loop drains on its timer.
 */
export const DEFAULT_WAKEUP_BYTES = 1 << 20;
