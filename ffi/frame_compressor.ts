/**
 * The agent's {@linkcode FrameCompressor}: zstd and gzip from the shim (libzstd's compressor and
 * zlib, linked into libflowexporter.so), instead of node:zlib, which brings Node's compatibility
 * layer into the agent: about 4 MiB of an idle agent's RSS. What reads batches (the collector,
 * the spool's checks of an earlier run's batches) decodes them with node:zlib;
 * tests/frame_compressor_test.ts holds the two to each other.
 *
 * @example
 * ```ts
 * import { nativeFrameCompressor } from "./frame_compressor.ts";
 * const compressFrame = nativeFrameCompressor();
 * const frame = compressFrame(new TextEncoder().encode("flows"), "zstd", 3);
 * ```
 *
 * @module
 */
import { type BodyCoding, type FrameCompressor, ZSTD_LEVEL } from "../lib/body_coding.ts";
import { type Native, openNative } from "./symbols.ts";

/**
 * A compressor writing into one output buffer, grown to the largest bound it met, then copying
 * each frame out at its size (a window keeps its frames until it is spooled).
 *
 * @param native the loaded shim (default: {@linkcode openNative})
 * @returns a {@linkcode FrameCompressor}
 * @throws {RangeError} from the compressor when zlib refuses the gzip level (use 1 to 9)
 */
export function nativeFrameCompressor(native: Native = openNative()): FrameCompressor {
  let out = new Uint8Array(0);
  return (piece: Uint8Array, coding: BodyCoding, gzipLevel: number): Uint8Array => {
    const length = BigInt(piece.length);
    const bound = Number(
      coding === "zstd" ? native.fe_zstd_bound(length) : native.fe_gzip_bound(length, gzipLevel),
    );
    if (bound === 0) {
      throw new RangeError(`Cannot compress with gzip level ${gzipLevel}: use 1 to 9`);
    }
    if (out.length < bound) out = new Uint8Array(bound);
    const size = Number(
      coding === "zstd"
        ? native.fe_zstd_frame(piece, length, out, BigInt(out.length), ZSTD_LEVEL)
        : native.fe_gzip_member(piece, length, out, BigInt(out.length), gzipLevel),
    );
    // Within the bound only a level the library refuses fails (-EINVAL), or memory (-ENOMEM).
    if (size < 0) throw new Error(`Cannot compress a batch piece with ${coding}: errno ${-size}`);
    return out.slice(0, size);
  };
}
