/**
 * The agent compresses batches in the shim (ffi/frame_compressor.ts); the collector and the
 * spool's checks decode them with node:zlib (lib/compression.ts). These tests hold the two
 * together: what the shim writes is what node:zlib's side of the wire format reads.
 */
import assert from "node:assert/strict";
import { releaseIdleMemory } from "../ffi/agent.ts";
import { nativeFrameCompressor } from "../ffi/frame_compressor.ts";
import { BODY_CODINGS, type BodyCoding, DEFAULT_GZIP_LEVEL, hasMagic } from "../lib/body_coding.ts";
import { checkZstdFrames, compressFrame, decompress } from "../lib/compression.ts";
import { concatBytes } from "../lib/bytes.ts";
import { encodeFlow } from "../lib/wire.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";

const CODINGS = Object.keys(BODY_CODINGS) as BodyCoding[];
const native = nativeFrameCompressor();
const flows = concatBytes(Array.from({ length: 2000 }, (_, i) => encodeFlow(syntheticFlow(i))));
const noise = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 2654435761) >>> 24);
const PIECES = [flows, noise, new Uint8Array(300_000), Uint8Array.of(42)];

Deno.test("node:zlib reads each frame the shim writes, for every coding", async () => {
  for (const coding of CODINGS) {
    for (const piece of PIECES) {
      const frame = native(piece, coding, DEFAULT_GZIP_LEVEL);
      assert.ok(hasMagic(frame, coding), coding);
      assert.deepEqual(await decompress(frame, coding, piece.length), piece, coding);
    }
  }
});

Deno.test("the shim compresses the same after a quiet agent gave its compression context back", async () => {
  const before = native(flows, "zstd", DEFAULT_GZIP_LEVEL);
  releaseIdleMemory();
  releaseIdleMemory(); // twice in a row: nothing is freed twice
  const after = native(flows, "zstd", DEFAULT_GZIP_LEVEL);
  assert.deepEqual(after, before, "the context made again writes the same frame");
  assert.deepEqual(await decompress(after, "zstd", flows.length), flows);
});

Deno.test("the shim's zstd frames declare their content size, which sizes the decoder's output", () => {
  // The header's 1-byte (1 byte), 2-byte (1 000 bytes) and 4-byte content size fields.
  for (const piece of [...PIECES, noise.subarray(0, 1000)]) {
    const frame = native(piece, "zstd", DEFAULT_GZIP_LEVEL);
    assert.deepEqual(checkZstdFrames(frame), [[0, frame.length, piece.length]]);
  }
});

Deno.test("a window of frames from the shim reads back as its pieces in order", async () => {
  for (const coding of CODINGS) {
    const body = concatBytes(PIECES.map((piece) => native(piece, coding, DEFAULT_GZIP_LEVEL)));
    const plain = concatBytes(PIECES);
    assert.deepEqual(await decompress(body, coding, plain.length), plain, coding);
  }
});

Deno.test("the shim's zstd frames carry a content checksum that catches a flipped bit", async () => {
  const frame = native(flows, "zstd", DEFAULT_GZIP_LEVEL);
  const CHECKSUM_FLAG = 0x04; // Frame_Header_Descriptor, after the 4-byte magic
  assert.ok(frame[4] & CHECKSUM_FLAG);
  const bad = frame.slice();
  bad[Math.floor(bad.length / 2)] ^= 0x10;
  await assert.rejects(decompress(bad, "zstd", flows.length));
});

Deno.test("the shim's zstd is node:zlib's level (sizes within 10 %), its gzip takes the level", () => {
  const ours = native(flows, "zstd", DEFAULT_GZIP_LEVEL).length;
  const theirs = compressFrame(flows, "zstd").length;
  assert.ok(Math.abs(ours - theirs) <= theirs / 10, `zstd: ${ours} vs ${theirs}`);
  const [fast, usual, best] = [1, DEFAULT_GZIP_LEVEL, 9].map((level) =>
    native(flows, "gzip", level).length
  );
  assert.ok(fast > usual && usual > best, `gzip levels 1, 3, 9: ${fast}, ${usual}, ${best}`);
});

Deno.test("a gzip level zlib refuses is a one-line error that names the range", () => {
  assert.throws(() => native(flows, "gzip", 12), {
    name: "RangeError",
    message: "Cannot compress with gzip level 12: use 1 to 9",
  });
});
