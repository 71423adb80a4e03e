/**
 * The dependency map at scale: how long the collector takes to aggregate `GET /v1/graph` over
 * a million stored flows, and how long its page takes to first draw a map of 2 000 workloads
 * (20 000 workload edges) in Debian's chromium.
 *
 *   deno run -A bench/graph_bench.ts [--flows N] [--workloads N] [--calls N] [--reps N] [--dir DIR]
 *
 * Prints one table, all rows measured in this run, each as the median and the worst of
 * `--reps` repetitions:
 * - the plain scan of the range through `flows_attributed` (`count(*)`, no grouping: the floor
 *   of any aggregation over the attributed flows), and the graph's aggregation
 *   (`SqliteGraphSource.edgeStats`), over the whole hour and over a tenth of it;
 * - `buildGraph` of the whole map (the page's 300 largest edges) and of a neighbourhood;
 * - `GET /v1/graph` end to end through HTTP, a range not cached and the same range again;
 * - the page: from navigation to the first drawn map (aggregation included), and from the
 *   answer's arrival to the first drawn map (the browser's own work), for the whole map and a
 *   neighbourhood of depth 2.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import { buildGraph, workloadNode } from "../collector/graph.ts";
import { SqliteGraphSource } from "../collector/graph_sqlite.ts";
import { startCollector } from "../collector/server.ts";
import { HeadlessChromium } from "../tests/_chromium.ts";
import { fleetWorkload, writeFleet } from "./_graph_fleet.ts";

const START_NS = 1_767_225_600_000_000_000n; // 2026-01-01T00:00:00Z
const HOUR_NS = 3_600_000_000_000n;

interface Row {
  what: string;
  ms: number[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const worst = (xs: number[]) => Math.max(...xs);

async function time(body: () => unknown): Promise<number> {
  const t = performance.now();
  await body();
  return performance.now() - t;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      flows: { type: "string", default: "1000000" },
      workloads: { type: "string", default: "2000" },
      calls: { type: "string", default: "10" },
      reps: { type: "string", default: "5" },
      dir: { type: "string" },
    },
  });
  const shape = {
    flows: Number(values.flows),
    workloads: Number(values.workloads),
    callsPerWorkload: Number(values.calls),
    startNs: START_NS,
  };
  const reps = Number(values.reps);
  const dir = await Deno.makeTempDir({ dir: values.dir, prefix: "graph_bench_" });
  const db = `${dir}/flows.db`;
  const rows: Row[] = [];
  const measure = async (what: string, body: (rep: number) => unknown) => {
    const ms: number[] = [];
    for (let rep = 0; rep < reps; rep++) ms.push(await time(() => body(rep)));
    rows.push({ what, ms });
  };
  try {
    console.error(
      `writing ${shape.flows} flows of ${shape.workloads} workloads x ${shape.callsPerWorkload} calls…`,
    );
    const writeS = writeFleet(db, shape);
    const whole = { fromNs: START_NS, toNs: START_NS + HOUR_NS };
    const tenth = { fromNs: START_NS, toNs: START_NS + HOUR_NS / 10n };
    const focus = workloadNode(fleetWorkload(5));
    let stats;
    {
      using source = SqliteGraphSource.open(db);
      const raw = new DatabaseSync(db, { readOnly: true });
      const scan = raw.prepare(
        "SELECT count(*) AS n FROM flows_attributed WHERE t_start_ns >= ? AND t_start_ns < ?",
      );
      await measure("scan of the range (count(*)), 1 h", () => scan.get(whole.fromNs, whole.toNs));
      await measure("graph aggregation (SQL), 1 h", () => source.edgeStats(whole));
      await measure(
        "scan of the range (count(*)), 6 min",
        () => scan.get(tenth.fromNs, tenth.toNs),
      );
      await measure("graph aggregation (SQL), 6 min", () => source.edgeStats(tenth));
      raw.close();
      stats = await source.edgeStats(whole);
      await measure(
        "buildGraph, whole map (300 largest edges)",
        () => buildGraph(stats, { limit: 300 }),
      );
      await measure(
        "buildGraph, neighbourhood depth 2",
        () => buildGraph(stats, { focus, depth: 2 }),
      );
    }
    const collector = await startCollector({ dbPath: db, port: 0, logger: () => {} });
    let chromium: HeadlessChromium | undefined;
    try {
      const get = async (toNs: bigint) => {
        const t = performance.now();
        const response = await fetch(
          `${collector.url}/v1/graph?from=${whole.fromNs}&to=${toNs}&limit=300`,
        );
        await response.arrayBuffer();
        if (!response.ok) throw new Error(`GET /v1/graph: ${response.status}`);
        return performance.now() - t;
      };
      const http: number[] = [];
      const cached: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const toNs = whole.toNs + BigInt(rep + 1); // a range of its own: not cached
        http.push(await get(toNs));
        cached.push(await get(toNs));
      }
      rows.push({ what: "GET /v1/graph over HTTP, 1 h, not cached", ms: http });
      rows.push({ what: "GET /v1/graph over HTTP, 1 h, same range again", ms: cached });

      chromium = await HeadlessChromium.launch();
      const context = chromium.browser.contexts()[0];
      for (
        const [what, extra] of [["whole map", ""], [
          "neighbourhood depth 2",
          `&node=${encodeURIComponent(focus)}&depth=2`,
        ]]
      ) {
        const total: number[] = [];
        const client: number[] = [];
        for (let rep = 0; rep < reps; rep++) {
          const page = await context.newPage();
          await page.setViewportSize({ width: 1400, height: 900 });
          const toNs = whole.toNs + BigInt(100 + rep); // not cached
          await page.goto(`${collector.url}/#from=${whole.fromNs}&to=${toNs}${extra}`);
          await page.waitForSelector("#graph[data-state=drawn]", { timeout: 300_000 });
          const marks = await page.$eval("#graph", (e) => ({
            fetched: e.getAttribute("data-fetched-ms"),
            drawn: e.getAttribute("data-drawn-ms"),
          }));
          total.push(Number(marks.drawn));
          client.push(Number(marks.drawn) - Number(marks.fetched));
          await page.close();
        }
        rows.push({ what: `page: navigation to first draw, ${what}`, ms: total });
        rows.push({ what: `page: answer to first draw, ${what}`, ms: client });
      }
    } finally {
      await chromium?.close();
      await collector.close();
    }
    const workloadEdges = stats.filter((e) =>
      e.source.startsWith("workload:") && e.target.startsWith("workload:")
    ).length;
    console.log(
      `${shape.flows} flows, ${shape.workloads} workloads, ${workloadEdges} workload edges, ` +
        `${stats.length} edges with groups; written in ${writeS.toFixed(1)} s; ${reps} repetitions`,
    );
    const scan1h = median(rows[0].ms);
    console.log("");
    console.log("| measurement | median ms | worst ms | median / scan 1 h |");
    console.log("| --- | ---: | ---: | ---: |");
    for (const r of rows) {
      console.log(
        `| ${r.what} | ${median(r.ms).toFixed(0)} | ${worst(r.ms).toFixed(0)} | ${
          (median(r.ms) / scan1h).toFixed(2)
        } |`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
