/**
 * The collector's page: the dependency map at `/`, plain HTML, CSS and one module
 * (collector/web/), drawn with cytoscape from the project's own node_modules, never from a
 * CDN: hosts may be offline. `deno compile` takes the same files in with `--include`
 * (scripts/dist.sh), at the same paths.
 *
 * The files carry no data: they are served without a token, and the page asks for the token
 * (kept in session storage) before it calls `GET /v1/graph`.
 *
 * @module
 */

import { errorText } from "../lib/error_text.ts";

/** A file of the page, ready to send. */
export interface WebAsset {
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
}

/** URL path → file and media type. */
const FILES: Readonly<Record<string, { url: URL; type: string }>> = {
  "/": { url: new URL("./web/index.html", import.meta.url), type: "text/html" },
  "/map.css": { url: new URL("./web/map.css", import.meta.url), type: "text/css" },
  "/map.js": { url: new URL("./web/map.js", import.meta.url), type: "text/javascript" },
  "/cytoscape.esm.min.mjs": {
    url: new URL("../node_modules/cytoscape/dist/cytoscape.esm.min.mjs", import.meta.url),
    type: "text/javascript",
  },
};

/** Only this origin's files run: no inline script, nothing from elsewhere. */
const HEADERS = {
  "content-security-policy":
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-cache",
};

const loaded = new Map<string, WebAsset>();

/**
 * The file of the page served at `path`, or undefined when `path` is not one of them. Read
 * once, on first use.
 *
 * @throws {Error} naming the file when it cannot be read (node_modules not installed)
 */
export function webAsset(path: string): WebAsset | undefined {
  const file = FILES[path];
  if (file === undefined) return undefined;
  let asset = loaded.get(path);
  if (asset === undefined) {
    let body: string;
    try {
      body = Deno.readTextFileSync(file.url);
    } catch (error) {
      throw new Error(
        `Cannot read the page's file ${file.url.pathname}: ${errorText(error)} (run make build)`,
        { cause: error },
      );
    }
    asset = { body, headers: { "content-type": `${file.type}; charset=utf-8`, ...HEADERS } };
    loaded.set(path, asset);
  }
  return asset;
}
