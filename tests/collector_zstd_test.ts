/**
 * The collector takes zstd bodies (what agents send by default) with the same bounds as gzip:
 * a cut-short frame, a frame that asks for a huge window and a zstd bomb are refused in one
 * line each, and an agent's zstd batch is stored.
 */
import assert from "node:assert/strict";
import { constants, zstdCompressSync } from "node:zlib";
import { DatabaseSync } from "node:sqlite";
import { batchCbor, makeFlow, nsAt, postBatch } from "./_batches.ts";
import { startCollector } from "../collector/server.ts";
import { compress } from "../lib/compression.ts";
import { ZSTD_WINDOW_LOG_MAX } from "../lib/body_coding.ts";

const zstd = { "content-encoding": "zstd" };

function flows() {
  return [0, 1].map((i) =>
    makeFlow({
      local: `10.0.0.1:${40_010 + i}`,
      remote: "10.0.0.2:5432",
      workload: "api",
      startS: 10 + i,
      endS: 11 + i,
    })
  );
}

async function answer(response: Response): Promise<[number, string]> {
  const text = (await response.text()).trimEnd();
  assert.equal(text.split("\n").length, 1, `one line: ${JSON.stringify(text)}`);
  return [response.status, text];
}

Deno.test("zstd bodies: stored when whole, refused in one line when cut, too wide or a bomb", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "collector_zstd_test_" });
  const collector = await startCollector({
    dbPath: `${dir}/flows.db`,
    port: 0,
    now: () => nsAt(60),
    maxDecompressedBytes: 1 << 20,
  });
  try {
    const body = await compress([batchCbor("node-a", 1, flows())], "zstd");
    await t.step("an agent's zstd batch is stored", async () => {
      assert.equal((await answer(await postBatch(collector.url, body, zstd)))[0], 200);
      using db = new DatabaseSync(`${dir}/flows.db`, { readOnly: true });
      assert.equal(db.prepare("SELECT count(*) AS n FROM flows").get()?.n, 2);
    });
    await t.step("a frame cut short: 400 naming it", async () => {
      const cut = body.subarray(0, body.length - 3);
      const [status, text] = await answer(await postBatch(collector.url, cut, zstd));
      assert.equal(status, 400);
      assert.match(text, /^Cannot decompress zstd body of \d+ bytes: zstd data cut short/);
    });
    await t.step(
      "a frame asking for a window over the limit: 400 before any allocation",
      async () => {
        const wide = zstdCompressSync(new Uint8Array(64 << 20), {
          params: {
            [constants.ZSTD_c_windowLog]: ZSTD_WINDOW_LOG_MAX + 4,
            [constants.ZSTD_c_compressionLevel]: 19,
          },
        });
        const [status, text] = await answer(await postBatch(collector.url, wide, zstd));
        assert.equal(status, 400);
        assert.match(text, /^Cannot decompress zstd body/);
      },
    );
    await t.step("a bomb stops at the decompressed-size limit: 413", async () => {
      const bomb = zstdCompressSync(new Uint8Array(16 << 20));
      const [status, text] = await answer(await postBatch(collector.url, bomb, zstd));
      assert.equal(status, 413);
      assert.match(text, /exceeds the 1048576-byte limit \(collector --max-decompressed-bytes\)/);
    });
    await t.step("another coding: 415 listing what is accepted", async () => {
      const [status, text] = await answer(
        await postBatch(collector.url, body, { "content-encoding": "br" }),
      );
      assert.equal(status, 415);
      assert.match(text, /send zstd, gzip or identity/);
    });
  } finally {
    await collector.close();
    await Deno.remove(dir, { recursive: true });
  }
});
