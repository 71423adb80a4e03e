/**
 * The collector's page in a real browser (Debian's chromium through playwright-core): the
 * dependency map of the scenario of tests/_graph_scenario.ts, with its numbers, its groups,
 * a node's dependency lists, an edge's flows, and the token kept for the session. Saves a
 * screenshot to build/test-screenshots/dependency_map.png.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { batchBody, nsAt, postBatch } from "./_batches.ts";
import { browserTest, HeadlessChromium } from "./_chromium.ts";
import {
  type ExpectedEdge,
  SCENARIO_EDGES,
  SCENARIO_LATE_BATCH,
  SCENARIO_RANGE,
  type ScenarioBatch,
  scenarioBatches,
} from "./_graph_scenario.ts";
import { nodeLabel } from "../collector/graph.ts";
import { startCollector } from "../collector/server.ts";

const TOKEN = "page-test-token";
/** Generous: a busy 2-core machine, a browser starting cold. */
const WAIT_MS = 120_000;
const SCREENSHOT = new URL("../build/test-screenshots/dependency_map.png", import.meta.url);

/** What the page shows of an edge, as its tables print it. */
function shownNumbers(e: ExpectedEdge): string[] {
  const rtt = (us: number | null) => us === null ? "–" : `${(us / 1000).toFixed(2)} ms`;
  return [
    ...[e.flows, e.bytesToTarget, e.bytesToSource, e.failed, e.resets].map((n) =>
      n.toLocaleString("en")
    ),
    rtt(e.rttP50Us),
    rtt(e.rttP99Us),
  ];
}

/** The cells of the table rows under `rows` whose `data-*` attribute `key` is set. */
function tableRows(page: Page, rows: string, key: string): Promise<Record<string, string[]>> {
  return page.$$eval(rows, (trs, key) =>
    Object.fromEntries(
      trs.map((tr) => [
        tr.getAttribute(`data-${key}`) ?? "",
        [...tr.querySelectorAll("td")].map((td) => td.textContent ?? ""),
      ]),
    ), key);
}

/** The page's cytoscape instance, as its module leaves it for the console. */
type MapWindow = { dependencyMap: import("cytoscape").Core };

async function waitDrawn(page: Page): Promise<void> {
  await page.waitForSelector("#graph[data-state=drawn]", { timeout: WAIT_MS });
}

browserTest(
  "the collector's page draws the dependency map and explains it on a click",
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "collector_page_test_" });
    let nowNs = nsAt(400);
    const collector = await startCollector({
      dbPath: `${dir}/flows.db`,
      port: 0,
      token: TOKEN,
      holdSeconds: 1,
      logger: () => {},
      now: () => nowNs,
    });
    let chromium: HeadlessChromium | undefined;
    try {
      const post = async (b: ScenarioBatch) => {
        const response = await postBatch(
          collector.url,
          batchBody(b.hostname, b.sequence, b.flows),
          {
            authorization: `Bearer ${TOKEN}`,
          },
        );
        assert.equal(response.status, 200, await response.text());
      };
      for (const b of scenarioBatches()) await post(b);
      nowNs += 2_000_000_000n; // past the hold delay: the flows no heartbeat settled give up
      collector.ingestor.tick();
      await post(SCENARIO_LATE_BATCH);

      chromium = await HeadlessChromium.launch();
      const page = await chromium.browser.contexts()[0].newPage();
      const pageErrors: string[] = [];
      page.on("pageerror", (error) => pageErrors.push(String(error)));
      page.setDefaultTimeout(WAIT_MS); // clicks and fills too, not only the waits
      await page.setViewportSize({ width: 1400, height: 900 });
      const range = `from=${SCENARIO_RANGE.fromNs}&to=${SCENARIO_RANGE.toNs}`;

      await t.step("the page asks for the token once, then draws the map", async () => {
        await page.goto(`${collector.url}/#${range}`, { timeout: WAIT_MS });
        await page.waitForSelector("#token-dialog[open]", { timeout: WAIT_MS });
        await page.fill("#token", TOKEN);
        await page.click("#token-dialog button[type=submit]");
        await waitDrawn(page);
        assert.equal(
          await page.evaluate(() => sessionStorage.getItem("flowexporter.token")),
          TOKEN,
        );
      });

      await t.step("every edge is drawn with its numbers", async () => {
        const drawn = await page.evaluate(() => {
          const cy = (globalThis as unknown as MapWindow).dependencyMap;
          return {
            nodes: cy.nodes().map((n) => n.data("label") as string),
            edges: cy.edges().map((e) => `${e.data("source")} -> ${e.data("target")}`),
          };
        });
        for (const e of SCENARIO_EDGES) {
          assert.ok(
            drawn.edges.includes(`${e.source} -> ${e.target}`),
            `${e.source} -> ${e.target}`,
          );
        }
        for (
          const group of [
            "unattributed: 10.0.0.0/8",
            "unattributed: 172.16.0.0/12",
            "external",
            "ambiguous",
            "pending",
          ]
        ) {
          assert.ok(drawn.nodes.includes(group), `the group ${group} is drawn`);
        }
        const rows = await page.$$eval("#edge-list tbody tr", (trs) =>
          trs.map((tr) =>
            [
              `${tr.getAttribute("data-source")} -> ${tr.getAttribute("data-target")}`,
              [...tr.querySelectorAll("td")].map((td) => td.textContent ?? ""),
            ] as const
          ));
        const table = new Map(rows);
        for (const e of SCENARIO_EDGES) {
          assert.deepEqual(table.get(`${e.source} -> ${e.target}`), [
            nodeLabel(e.source),
            nodeLabel(e.target),
            ...shownNumbers(e),
          ]);
        }
        assert.match(
          await page.textContent("#status") ?? "",
          /^the whole map: \d+ nodes, \d+ edges, \d+ workloads in the range\.$/,
        );
      });

      await t.step(
        "a click on checkout lists what it depends on and what depends on it",
        async () => {
          const at = await page.evaluate(() => {
            const cy = (globalThis as unknown as MapWindow).dependencyMap;
            const node = cy.getElementById("workload:checkout");
            const box = cy.container()!.getBoundingClientRect();
            return {
              x: box.left + node.renderedPosition().x,
              y: box.top + node.renderedPosition().y,
            };
          });
          await page.mouse.click(at.x, at.y);
          await page.waitForSelector('#details[data-node="workload:checkout"] section table', {
            timeout: WAIT_MS,
          });
          const [dependencies, dependents] = await page.$$eval(
            "#details section",
            (sections) => sections.map((s) => s.querySelector("h3")?.textContent ?? ""),
          );
          const expectedServers = SCENARIO_EDGES.filter((e) => e.source === "workload:checkout");
          assert.equal(dependencies, `Depends on (${expectedServers.length})`);
          assert.equal(dependents, "Depended on by (1)");
          const [servers, clients] = await Promise.all([
            tableRows(page, "#details section:nth-of-type(1) tbody tr", "node"),
            tableRows(page, "#details section:nth-of-type(2) tbody tr", "node"),
          ]);
          assert.deepEqual(
            servers,
            Object.fromEntries(
              expectedServers.map((e) => [e.target, [nodeLabel(e.target), ...shownNumbers(e)]]),
            ),
          );
          const frontend = SCENARIO_EDGES.find((e) => e.source === "workload:frontend")!;
          assert.deepEqual(clients, {
            "workload:frontend": ["frontend", ...shownNumbers(frontend)],
          });
        },
      );

      await t.step("the map centres on a clicked node", async () => {
        await page.click("#details button");
        await page.locator("#status", { hasText: /^checkout and its neighbours to depth 2:/ })
          .waitFor({ timeout: WAIT_MS });
        await waitDrawn(page);
        const focus = await page.evaluate(() =>
          (globalThis as unknown as MapWindow).dependencyMap.nodes("[?focus]").map((n) => n.id())
        );
        assert.deepEqual(focus, ["workload:checkout"]);
        await page.screenshot({ path: SCREENSHOT.pathname });
      });

      await t.step("the search box shows a neighbourhood; an edge lists its flows", async () => {
        await page.fill("#search", "front"); // the only workload containing it
        await page.selectOption("#depth", "1");
        await page.click("#controls button[type=submit]");
        await page.locator("#status", { hasText: /^frontend and its neighbours/ }).waitFor({
          timeout: WAIT_MS,
        });
        await waitDrawn(page);
        assert.equal(await page.inputValue("#search"), "frontend");
        const at = await page.evaluate(() => {
          const cy = (globalThis as unknown as MapWindow).dependencyMap;
          const box = cy.container()!.getBoundingClientRect();
          const edges = cy.edges();
          const middle = edges[0].renderedMidpoint();
          return { count: edges.length, x: box.left + middle.x, y: box.top + middle.y };
        });
        assert.equal(at.count, 1, "frontend -> checkout only");
        await page.mouse.click(at.x, at.y);
        await page.waitForSelector("#details table.flows tbody tr", { timeout: WAIT_MS });
        assert.equal(await page.textContent("#details h2"), "frontend → checkout");
        const flows = await page.$$eval(
          "#details table.flows tbody tr",
          (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)),
        );
        assert.deepEqual(flows.map((f) => [f[1], f[5]]), [
          ["node-f", "reset"],
          ["node-f", "refused"],
          ["node-f", "normal"],
        ]);
        assert.ok(page.url().endsWith(`#${range}&workload=frontend&depth=1`), page.url());
      });

      await t.step(
        "a reload keeps the token for the session and the view in the address",
        async () => {
          await page.reload({ timeout: WAIT_MS });
          await waitDrawn(page);
          assert.equal(await page.isVisible("#token-dialog"), false);
          assert.match(await page.textContent("#status") ?? "", /^frontend and its neighbours/);
        },
      );
      assert.deepEqual(pageErrors, []);
    } finally {
      await chromium?.close();
      await collector.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
