import assert from "node:assert/strict";
import { constants, gzipSync, zstdCompressSync } from "node:zlib";
import { checkZstdFrames, compress, compressFrame, decompress } from "../lib/compression.ts";
import {
  BODY_CODINGS,
  type BodyCoding,
  codingOfContentEncoding,
  hasMagic,
  ZSTD_WINDOW_LOG_MAX,
} from "../lib/body_coding.ts";
import { encodeFlow } from "../lib/wire.ts";
import { syntheticFlow } from "./_synthetic_flows.ts";

const CODINGS = Object.keys(BODY_CODINGS) as BodyCoding[];
const parts = Array.from({ length: 300 }, (_, i) => encodeFlow(syntheticFlow(i)));
const plain = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
parts.reduce((at, p) => (plain.set(p, at), at + p.length), 0);

Deno.test("each coding round-trips a window's parts and starts with its magic", async () => {
  for (const coding of CODINGS) {
    const body = await compress(parts, coding);
    assert.ok(hasMagic(body, coding), coding);
    assert.ok(body.length < plain.length / 2, `${coding}: ${body.length} of ${plain.length}`);
    assert.deepEqual(await decompress(body, coding, plain.length), plain);
  }
});

Deno.test("every strict prefix of a body is refused, never read as a shorter batch", async () => {
  for (const coding of CODINGS) {
    const body = await compress(parts, coding);
    for (let cut = 0; cut < body.length; cut += Math.max(1, Math.floor(body.length / 97))) {
      await assert.rejects(
        decompress(body.subarray(0, cut), coding, plain.length),
        `${coding} cut at ${cut}`,
      );
    }
    await assert.rejects(decompress(body.subarray(0, body.length - 1), coding, plain.length));
  }
});

Deno.test("a flipped bit inside a zstd frame fails its checksum", async () => {
  const body = await compress(parts, "zstd");
  const bad = body.slice();
  bad[Math.floor(bad.length / 2)] ^= 0x10;
  await assert.rejects(decompress(bad, "zstd", plain.length));
});

Deno.test("decompression stops at maxBytes, and a zstd window over the limit is refused", async () => {
  const zeros = new Uint8Array(8 << 20);
  for (const coding of CODINGS) {
    await assert.rejects(decompress(await compress([zeros], coding), coding, 1 << 20), coding);
  }
  const wide = zstdCompressSync(zeros, {
    params: {
      [constants.ZSTD_c_windowLog]: ZSTD_WINDOW_LOG_MAX + 2,
      [constants.ZSTD_c_compressionLevel]: 19,
    },
  });
  await assert.rejects(decompress(wide, "zstd", zeros.length), /memory|window/i);
});

Deno.test("checkZstdFrames accepts concatenated and skippable frames and names the problem", () => {
  const one = zstdCompressSync(plain.subarray(0, 100));
  const skippable = Uint8Array.of(0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9);
  const body = new Uint8Array([...one, ...skippable, ...one]);
  // node:zlib's frames declare no content size (-1); the shim's do (frame_compressor_test.ts).
  assert.deepEqual(checkZstdFrames(body), [
    [0, one.length, -1],
    [one.length + skippable.length, body.length, -1],
  ]);
  assert.throws(() => checkZstdFrames(new Uint8Array(0)), /empty/);
  assert.throws(() => checkZstdFrames(gzipSync(plain)), /not zstd data at byte 0/);
  assert.throws(() => checkZstdFrames(one.subarray(0, one.length - 1)), /cut short/);
});

Deno.test("Content-Encoding tokens map to codings, case and x-gzip included", () => {
  assert.equal(codingOfContentEncoding("zstd"), "zstd");
  assert.equal(codingOfContentEncoding(" GZIP "), "gzip");
  assert.equal(codingOfContentEncoding("x-gzip"), "gzip");
  assert.equal(codingOfContentEncoding("br"), undefined);
});

Deno.test("a body of many frames decompresses whole, whichever coding", async () => {
  for (const coding of CODINGS) {
    const frames = parts.map((part) => compressFrame(part, coding));
    const joined = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    frames.reduce((at, f) => (joined.set(f, at), at + f.length), 0);
    assert.deepEqual(await decompress(joined, coding, plain.length), plain, coding);
    await assert.rejects(decompress(joined, coding, plain.length - 1), /limit/);
  }
});
