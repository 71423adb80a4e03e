/**
 * The layout is the architecture: imports run downward only. Checked over the import graph of
 * every TypeScript module in the product folders.
 *
 *   bpf/ (C)  →  ffi/  →  identity/, collector/, cli/
 *   lib/ is the floor: pure pipeline, no FFI, nothing from the folders above it.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const FOLDERS = ["lib", "ffi", "identity", "collector", "cli"] as const;
type Folder = typeof FOLDERS[number];
/** Where the product's modules are used from besides each other. */
const USERS = ["tests", "bench"] as const;

/** identity/'s one door to the native boundary. */
const IDENTITY_FFI_ENTRY = "identity/ffi.ts";

interface Import {
  from: string; // repo-relative path of the importing module
  to: string; // repo-relative path of the imported module
}

function relativeImports(): Import[] {
  const imports: Import[] = [];
  for (const folder of [...FOLDERS, ...USERS]) {
    for (const entry of Deno.readDirSync(new URL(`${folder}/`, ROOT))) {
      if (!entry.isFile || !entry.name.endsWith(".ts")) continue;
      const from = `${folder}/${entry.name}`;
      const text = Deno.readTextFileSync(new URL(from, ROOT));
      for (const [, spec] of text.matchAll(/(?:import|export)[^"']*?from\s+["'](\.[^"']+)["']/g)) {
        const to = new URL(spec, new URL(from, ROOT)).pathname.slice(ROOT.pathname.length);
        imports.push({ from, to });
      }
      for (
        const [, spec] of text.matchAll(/new URL\(["'](\.[^"']+\.ts)["'], import\.meta\.url\)/g)
      ) {
        const to = new URL(spec, new URL(from, ROOT)).pathname.slice(ROOT.pathname.length);
        imports.push({ from, to });
      }
    }
  }
  return imports;
}

const folderOf = (path: string) => path.split("/")[0] as Folder;
const PRODUCT = new Set<string>(FOLDERS);
const IMPORTS = relativeImports();

function violations(rule: (i: Import) => boolean): string[] {
  return IMPORTS.filter(rule).map((i) => `${i.from} imports ${i.to}`);
}

function productViolations(rule: (i: Import) => boolean): string[] {
  return violations((i) => PRODUCT.has(folderOf(i.from)) && rule(i));
}

Deno.test("the import graph was read", () => {
  assert.ok(IMPORTS.length > 50, `${IMPORTS.length} imports`);
});

Deno.test("lib/ imports nothing from identity/, ffi/, cli/ or collector/", () => {
  assert.deepEqual(
    productViolations((i) => folderOf(i.from) === "lib" && folderOf(i.to) !== "lib"),
    [],
  );
});

Deno.test("ffi/ imports only lib/ and itself", () => {
  assert.deepEqual(
    productViolations((i) =>
      folderOf(i.from) === "ffi" && !["ffi", "lib"].includes(folderOf(i.to))
    ),
    [],
  );
});

Deno.test("identity/ reaches ffi/ only through its one entry file", () => {
  assert.deepEqual(
    productViolations((i) =>
      folderOf(i.from) === "identity" && folderOf(i.to) === "ffi" && i.from !== IDENTITY_FFI_ENTRY
    ),
    [],
  );
});

Deno.test("collector/ imports neither ffi/ nor cli/ nor identity/", () => {
  assert.deepEqual(
    productViolations((i) =>
      folderOf(i.from) === "collector" && ["ffi", "cli", "identity"].includes(folderOf(i.to))
    ),
    [],
  );
});

Deno.test("no _ module of the product is imported from outside its folder", () => {
  assert.deepEqual(
    violations((i) => {
      const name = i.to.split("/").at(-1)!;
      return name.startsWith("_") && PRODUCT.has(folderOf(i.to)) &&
        folderOf(i.to) !== folderOf(i.from);
    }),
    [],
  );
});

/**
 * What `flowexporter run` loads at start (main.ts imports cli/run.ts for it, and cli/run.ts the
 * rest; dynamic imports load later, on the paths that need them). The agent runs on every host:
 * it holds neither the collector's server, stores and clients, nor any npm package, nor any
 * node: module, whose compatibility layer alone is about 4 MiB of an idle agent. Importing the
 * collector's option schema once brought SQLite, node:http and @clickhouse/client in: 8 MiB.
 */
Deno.test("the agent starts without the collector's modules, npm packages or node: modules", async () => {
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "cli/run.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.ok(info.success, "deno info cli/run.ts failed");
  const graph = JSON.parse(new TextDecoder().decode(info.stdout)) as {
    roots: string[];
    modules: {
      specifier: string;
      dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
    }[];
  };
  const bySpecifier = new Map(graph.modules.map((m) => [m.specifier, m]));
  const loaded = new Set<string>();
  const pending = [...graph.roots];
  while (pending.length > 0) {
    const specifier = pending.pop()!;
    if (loaded.has(specifier)) continue;
    loaded.add(specifier);
    for (const dependency of bySpecifier.get(specifier)?.dependencies ?? []) {
      if (!dependency.isDynamic && dependency.code) pending.push(dependency.code.specifier);
    }
  }
  const specifiers = [...loaded].map((s) =>
    s.startsWith(ROOT.href) ? s.slice(ROOT.href.length) : s
  );
  assert.ok(specifiers.includes("ffi/agent.ts"), specifiers.join(" "));
  // The agent's configuration keeps out of the collector's variables, so it reads the
  // collector's option schema and its defaults, and nothing else of collector/.
  const allowed = new Set(["collector/config.ts", "collector/defaults.ts"]);
  assert.deepEqual(
    specifiers.filter((s) =>
      (folderOf(s) === "collector" && !allowed.has(s)) || s.startsWith("npm:") ||
      s.startsWith("node:") || s.includes("node_modules/")
    ),
    [],
  );
});
