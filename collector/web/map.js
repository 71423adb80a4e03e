/**
 * The collector's dependency map page: asks `GET /v1/graph` for the map of a time range (the
 * whole map, bounded to its largest edges, or the neighbourhood of one workload), draws it with
 * cytoscape, lists a node's dependencies and dependents or an edge's latest flows on a click.
 * The view is kept in the address (`#range=1h&workload=checkout&depth=2`, or `from=`/`to=`
 * with RFC 3339 times or ns since the epoch), so that it can be shared. The bearer token, when
 * the collector asks for one, is kept in session storage.
 *
 * @module
 */

import cytoscape from "./cytoscape.esm.min.mjs";

const TOKEN_KEY = "flowexporter.token";
/** Edges drawn at most: the whole map's largest, or a neighbourhood's nearest. */
const OVERVIEW_EDGES = 300;
const NEIGHBOURHOOD_EDGES = 600;
/** Up to this many nodes, the whole map is laid out by force (cose); beyond, in rings. */
const FORCE_LAYOUT_NODES = 150;
/** Flows listed for an edge. */
const EDGE_FLOWS = 50;
const RANGE_MS = { "15m": 9e5, "1h": 3.6e6, "6h": 2.16e7, "1d": 8.64e7, "7d": 6.048e8 };

const STYLE = [
  {
    selector: "node",
    style: {
      label: "data(label)",
      "font-size": 11,
      "text-valign": "bottom",
      "text-margin-y": 4,
      "text-wrap": "ellipsis",
      "text-max-width": 200,
      "min-zoomed-font-size": 7,
      "background-color": "#4a6fa5",
      width: 18,
      height: 18,
    },
  },
  {
    selector: "node[kind != 'workload']",
    style: {
      shape: "round-rectangle",
      "background-color": "#ffffff",
      "border-width": 2,
      "border-style": "dashed",
      "border-color": "#777777",
      color: "#555555",
    },
  },
  {
    selector: "node[?focus]",
    style: { "background-color": "#1d4f91", width: 28, height: 28, "font-weight": "bold" },
  },
  {
    selector: "edge",
    style: {
      width: "data(width)",
      "line-color": "data(color)",
      "target-arrow-color": "data(color)",
      "target-arrow-shape": "triangle",
      "arrow-scale": 0.8,
      "curve-style": "bezier",
      opacity: 0.85,
    },
  },
  { selector: ":selected", style: { "overlay-color": "#1d4f91", "overlay-opacity": 0.2 } },
];

const $ = (id) => document.getElementById(id);
const view = { range: "1h", from: "", to: "", focus: null, depth: "2" };
/** The range of the map on screen, as sent: clicks ask for the same one. */
let shown = { from: "", to: "" };
let labels = new Map();
let workloads = [];
let cy = null;
/** Answers to older clicks are dropped. */
let clickSequence = 0;
let tokenAsked = null;

function readAddress() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("from") || p.has("to")) {
    view.range = "custom";
    view.from = p.get("from") ?? "";
    view.to = p.get("to") ?? "";
  } else if (p.get("range") in RANGE_MS) view.range = p.get("range");
  if (p.has("workload")) view.focus = `workload:${p.get("workload")}`;
  else if (p.has("node")) view.focus = p.get("node");
  if (/^[0-9]+$/.test(p.get("depth") ?? "")) view.depth = p.get("depth");
  $("range").value = view.range;
  $("depth").value = view.depth;
  $("search").value = view.focus?.startsWith("workload:") ? view.focus.slice(9) : "";
  $("from").value = localInput(view.from);
  $("to").value = localInput(view.to);
  $("controls").classList.toggle("custom-range", view.range === "custom");
}

function writeAddress() {
  const p = new URLSearchParams();
  if (view.range === "custom") {
    if (view.from) p.set("from", view.from);
    if (view.to) p.set("to", view.to);
  } else p.set("range", view.range);
  if (view.focus?.startsWith("workload:")) p.set("workload", view.focus.slice(9));
  else if (view.focus) p.set("node", view.focus);
  if (view.focus) p.set("depth", view.depth);
  history.replaceState(null, "", `#${p}`);
}

/** A time as the server takes it (RFC 3339 or ns) → the value of a datetime-local input. */
function localInput(text) {
  const ms = /^[0-9]+$/.test(text) ? Number(BigInt(text) / 1_000_000n) : Date.parse(text);
  if (!Number.isFinite(ms)) return "";
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 19);
}

/** The range to ask for: a preset ends now (fixed here, so that clicks ask for the same one). */
function rangeNow() {
  if (view.range === "custom") return { from: view.from, to: view.to };
  const nowMs = Date.now();
  const ns = (ms) => String(BigInt(Math.round(ms)) * 1_000_000n);
  return { from: ns(nowMs - RANGE_MS[view.range]), to: ns(nowMs) };
}

function rangeParams(range) {
  const params = {};
  if (range.from) params.from = range.from;
  if (range.to) params.to = range.to;
  return params;
}

function askToken(reason) {
  tokenAsked ??= new Promise((resolve) => {
    const dialog = $("token-dialog");
    $("token-reason").textContent = reason;
    dialog.addEventListener("close", () => {
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      tokenAsked = null;
      resolve();
    }, { once: true });
    dialog.showModal();
  });
  return tokenAsked;
}

/** GETs an endpoint as JSON, asking for the token when the collector wants one. */
async function api(path, params) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(`${path}?${new URLSearchParams(params)}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (response.status === 401) {
      await askToken(
        token
          ? "The collector refused this token: enter it again."
          : "This collector asks for a bearer token.",
      );
      continue;
    }
    if (!response.ok) throw new Error((await response.text()).trim());
    return await response.json();
  }
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

const NUMBER = new Intl.NumberFormat("en"); // one formatter: toLocaleString makes one a call
const count = (n) => NUMBER.format(n);
const rtt = (us) => us === null ? "–" : `${(us / 1000).toFixed(2)} ms`;
const label = (id) => labels.get(id) ?? id;

function cell(text, number = false) {
  const td = document.createElement("td");
  td.textContent = text;
  if (number) td.className = "number";
  return td;
}

/** The headers of {@linkcode edgeCells}. */
const EDGE_TITLES = ["flows", "bytes →", "bytes ←", "failed", "resets", "RTT p50", "RTT p99"];

function tableWithHead(titles) {
  const table = document.createElement("table");
  table.createTHead().insertRow().append(...titles.map((title) => {
    const th = document.createElement("th");
    th.textContent = title;
    return th;
  }));
  return table;
}

/** The numbers of an edge as table cells, in the order of {@linkcode EDGE_TITLES}. */
function edgeCells(e) {
  return [
    cell(count(e.flows), true),
    cell(count(e.bytes_to_target), true),
    cell(count(e.bytes_to_source), true),
    cell(count(e.failed), true),
    cell(count(e.resets), true),
    cell(rtt(e.rtt_p50_us), true),
    cell(rtt(e.rtt_p99_us), true),
  ];
}

function edgeTable(caption, edges, other) {
  const section = document.createElement("section");
  const h = document.createElement("h3");
  h.textContent = `${caption} (${edges.length})`;
  section.append(h);
  if (edges.length === 0) return section;
  const table = tableWithHead([other === "target" ? "server" : "client", ...EDGE_TITLES]);
  const body = table.createTBody();
  for (const e of edges) {
    const row = body.insertRow();
    row.dataset.node = e[other];
    row.append(cell(label(e[other])), ...edgeCells(e));
  }
  section.append(table);
  return section;
}

async function showNode(id) {
  const mine = ++clickSequence;
  const details = $("details");
  const h = document.createElement("h2");
  h.textContent = label(id);
  const centre = document.createElement("button");
  centre.type = "button";
  centre.textContent = "Centre the map here";
  centre.addEventListener("click", () => {
    view.focus = id;
    $("search").value = id.startsWith("workload:") ? id.slice(9) : "";
    show();
  });
  details.replaceChildren(h, centre, document.createTextNode(" Loading…"));
  details.dataset.node = id;
  const graph = await api("/v1/graph", { ...rangeParams(shown), node: id, depth: 1, limit: 0 });
  if (mine !== clickSequence) return;
  for (const n of graph.nodes) labels.set(n.id, n.label);
  details.replaceChildren(
    h,
    centre,
    edgeTable("Depends on", graph.edges.filter((e) => e.source === id), "target"),
    edgeTable("Depended on by", graph.edges.filter((e) => e.target === id), "source"),
  );
}

async function showEdge(e) {
  const mine = ++clickSequence;
  const details = $("details");
  const h = document.createElement("h2");
  h.textContent = `${label(e.source)} → ${label(e.target)}`;
  const summary = tableWithHead(EDGE_TITLES);
  summary.createTBody().insertRow().append(...edgeCells(e));
  const caption = document.createElement("h3");
  caption.textContent = "Latest flows";
  details.replaceChildren(h, summary, caption, document.createTextNode("Loading…"));
  delete details.dataset.node;
  const flows = await api("/v1/graph/flows", {
    ...rangeParams(shown),
    source: e.source,
    target: e.target,
    limit: EDGE_FLOWS,
  });
  if (mine !== clickSequence) return;
  const table = tableWithHead([
    "start (UTC)",
    "host",
    "local",
    "dir",
    "remote",
    "end",
    "sent",
    "received",
  ]);
  table.className = "flows";
  const body = table.createTBody();
  for (const f of flows) {
    const row = body.insertRow();
    row.title = JSON.stringify(f);
    const start = new Date(f.t_start_ns / 1e6).toISOString().replace("T", " ").slice(0, 23);
    row.append(
      cell(start),
      cell(f.host),
      cell(`${f.local_ip}:${f.local_port} ${f.local_workload_id || "-"}`),
      cell(f.direction === "outbound" ? "→" : f.direction === "inbound" ? "←" : "?"),
      cell(`${f.remote_ip}:${f.remote_port} ${f.remote_workload_id ?? `(${f.attribution})`}`),
      cell(f.end),
      cell(count(f.bytes_sent), true),
      cell(count(f.bytes_received), true),
    );
  }
  caption.textContent = `Latest flows (${flows.length})`;
  details.replaceChildren(h, summary, caption, table);
}

function fillEdgeList(graph) {
  const body = $("edge-list").querySelector("tbody");
  body.replaceChildren(...graph.edges.map((e) => {
    const row = document.createElement("tr");
    row.dataset.source = e.source;
    row.dataset.target = e.target;
    row.append(cell(label(e.source)), cell(label(e.target)), ...edgeCells(e));
    return row;
  }));
}

function draw(graph) {
  const container = $("graph");
  cy?.destroy();
  const maxDepth = Math.max(0, ...graph.nodes.map((n) => n.depth ?? 0));
  cy = cytoscape({
    container,
    elements: [
      ...graph.nodes.map((n) => ({
        data: {
          id: n.id,
          label: n.label,
          kind: n.kind,
          depth: n.depth,
          focus: n.id === graph.focus,
        },
      })),
      ...graph.edges.map((e, i) => ({
        data: {
          id: `edge-${i}`,
          source: e.source,
          target: e.target,
          width: e.width,
          color: e.color,
          stats: e,
        },
      })),
    ],
    style: STYLE,
    layout: graph.focus === null
      ? graph.nodes.length <= FORCE_LAYOUT_NODES
        ? { name: "cose", animate: false, randomize: false, nodeRepulsion: () => 8000 }
        : { name: "concentric", animate: false, concentric: (n) => n.degree(), minNodeSpacing: 20 }
      : {
        name: "concentric",
        animate: false,
        concentric: (n) => maxDepth - (n.data("depth") ?? maxDepth),
        levelWidth: () => 1,
        minNodeSpacing: 30,
      },
    minZoom: 0.05,
    maxZoom: 4,
  });
  // For the console and the browser test: the drawn map.
  globalThis.dependencyMap = cy;
  cy.on("tap", "node", (event) => showNode(event.target.id()).catch(showError));
  cy.on("tap", "edge", (event) => showEdge(event.target.data("stats")).catch(showError));
  cy.ready(() =>
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        container.dataset.drawnMs = performance.now().toFixed(1);
        container.dataset.state = "drawn";
      })
    )
  );
}

async function show() {
  writeAddress();
  const container = $("graph");
  container.dataset.state = "loading";
  setStatus("Loading…");
  const range = rangeNow();
  const params = {
    ...rangeParams(range),
    limit: view.focus ? NEIGHBOURHOOD_EDGES : OVERVIEW_EDGES,
  };
  if (view.focus) Object.assign(params, { node: view.focus, depth: view.depth });
  const graph = await api("/v1/graph", params);
  container.dataset.fetchedMs = performance.now().toFixed(1);
  shown = range;
  labels = new Map(graph.nodes.map((n) => [n.id, n.label]));
  workloads = graph.workloads;
  $("workloads").replaceChildren(...workloads.map((w) => new Option(w)));
  fillEdgeList(graph);
  draw(graph);
  const what = view.focus
    ? `${label(view.focus)} and its neighbours to depth ${view.depth}`
    : "the whole map";
  if (view.focus && graph.nodes.length === 0) {
    setStatus(`No flows of ${label(view.focus)} in this time range.`);
  } else {
    setStatus(
      `${what}: ${count(graph.nodes.length)} nodes, ${count(graph.edges.length)} edges` +
        (graph.truncated
          ? ` (the ${graph.focus ? "nearest" : "largest"} of ${
            count(graph.total_edges)
          }; search a workload to see its neighbourhood)`
          : "") +
        `, ${count(workloads.length)} workloads in the range.`,
    );
  }
}

function showError(error) {
  $("graph").dataset.state = "error";
  setStatus(error.message, true);
}

/** The workload the search box names: typed in full, or the only one containing the text. */
function searched() {
  const text = $("search").value.trim();
  if (text === "" || workloads.includes(text)) return text;
  const matches = workloads.filter((w) => w.toLowerCase().includes(text.toLowerCase()));
  if (matches.length === 1) return matches[0];
  throw new Error(
    matches.length === 0
      ? `No workload in this range matches "${text}".`
      : `${matches.length} workloads match "${text}": ${matches.slice(0, 5).join(", ")}${
        matches.length > 5 ? ", …" : ""
      }. Pick one.`,
  );
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  try {
    view.range = $("range").value;
    view.depth = $("depth").value;
    if (view.range === "custom") {
      // An input left as it was keeps its time exact (the inputs show whole seconds).
      const typed = (input, was) => {
        const iso = input.value ? new Date(input.value).toISOString() : "";
        return localInput(iso) === localInput(was) ? was : iso;
      };
      view.from = typed($("from"), view.from);
      view.to = typed($("to"), view.to);
    }
    const workload = searched();
    $("search").value = workload;
    view.focus = workload === "" ? null : `workload:${workload}`;
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  show().catch(showError);
});
$("range").addEventListener("change", () => {
  $("controls").classList.toggle("custom-range", $("range").value === "custom");
});
$("overview").addEventListener("click", () => {
  view.focus = null;
  $("search").value = "";
  show().catch(showError);
});

readAddress();
show().catch(showError);
