/**
 * The shim's encoder of kernel records (`fe_encode_flows`): the agent's hot path, each record it
 * reads encoded into its wire form in C, byte for byte as lib/wire.ts `RecordWriter` writes it.
 * What the wire format defines (codes, flow ends, the room a flow takes) comes from
 * lib/wire.ts `RECORD_ENCODING`; a record the shim declines goes through `RecordWriter`
 * (lib/encoded_flows.ts), and tests/record_encoder_test.ts holds the two together.
 *
 * @module
 */
import { RECORD_SIZE } from "../lib/decode.ts";
import type { RunEncoder } from "../lib/encoded_flows.ts";
import { BOOT_ID_BYTES } from "../lib/flow_id.ts";
import { RECORD_ENCODING } from "../lib/wire.ts";
import { type Native, openNative } from "./symbols.ts";

/**
 * A {@linkcode RunEncoder} of the shim's.
 *
 * @example
 * ```ts
 * import { nativeRunEncoder } from "./record_encoder.ts";
 * import { encodeRecords, FlowBuffer } from "../lib/encoded_flows.ts";
 * declare const chunk: import("../lib/fanout.ts").RecordChunk;
 * const flows = encodeRecords(new FlowBuffer(), chunk, () => true, nativeRunEncoder());
 * ```
 */
export function nativeRunEncoder(native: Native = openNative()): RunEncoder {
  const e = RECORD_ENCODING;
  return (records, chunk, out, used, ends) => {
    // RecordWriter takes a record of another boot ID length through its slow path: so does this.
    if (chunk.bootId.length !== BOOT_ID_BYTES) return 0;
    return native.fe_encode_flows(
      records,
      Math.min(records.length / RECORD_SIZE, ends.length),
      chunk.bootId,
      chunk.clockOffsetNs,
      e.endCodes,
      e.tcpStates,
      e.identitySources,
      e.directions,
      e.openEndCode,
      e.interimCode,
      out,
      used,
      out.length,
      e.room,
      ends,
    );
  };
}
