/**
 * Test helper: numbers the C sources repeat from the TypeScript side, read from the sources
 * themselves, so a test can hold the two together.
 *
 * @module
 */

const BPF_SOURCE = new URL("../bpf/flowexporter.bpf.c", import.meta.url);
const SHIM_SOURCE = new URL("../ffi/flowexporter.c", import.meta.url);
const BPF_HEADER = new URL("../bpf/flowexporter.h", import.meta.url);

/**
 * The value of a C constant expression of the forms the sources use: `131072`, `8 << 20`,
 * `(1u << 3)`, `(1ULL << 63)` (exact: a power of two is a double's).
 */
function constant(expr: string): number {
  const m = /^\(?\s*(\d+)(?:u|ull)?\s*(?:<<\s*(\d+))?\s*\)?$/i.exec(expr.trim());
  if (!m) throw new Error(`Cannot evaluate the C expression ${JSON.stringify(expr)}`);
  return Number(m[1]) * 2 ** Number(m[2] ?? 0);
}

/** `max_entries` of the map `name` as bpf/flowexporter.bpf.c defines it. */
export function bpfMaxEntries(name: string): number {
  const source = Deno.readTextFileSync(BPF_SOURCE);
  const maps = source.matchAll(/struct \{([^}]*)\} (\w+) SEC\("\.maps"\);/g);
  const body = [...maps].find((m) => m[2] === name)?.[1];
  const entries = body && /__uint\(max_entries, ([^)]+(?:\))?)\);/.exec(body)?.[1];
  if (!entries) throw new Error(`No map ${name} with max_entries in ${BPF_SOURCE.pathname}`);
  return constant(entries);
}

/** The initial value of the BPF program's global `const volatile … name = …;`. */
export function bpfConstant(name: string): number {
  const source = Deno.readTextFileSync(BPF_SOURCE);
  const m = new RegExp(`const volatile \\w+ ${name} = ([^;]+);`).exec(source);
  if (!m) throw new Error(`No const volatile ${name} in ${BPF_SOURCE.pathname}`);
  return constant(m[1]);
}

/** The `#define <prefix>NAME value` macros of the C file at `source`, by NAME. */
function defines(source: URL, prefix: string): Record<string, number> {
  const text = Deno.readTextFileSync(source);
  const found: Record<string, number> = {};
  for (
    const m of text.matchAll(new RegExp(`^#define ${prefix}(\\w+)\\s+(\\([^)]*\\)|\\d+)`, "gm"))
  ) {
    found[m[1]] = constant(m[2]);
  }
  return found;
}

/** The shim's `#define <prefix>NAME value` macros, by NAME. */
export function shimDefines(prefix: string): Record<string, number> {
  return defines(SHIM_SOURCE, prefix);
}

/** The shared header's (bpf/flowexporter.h) `#define <prefix>NAME value` macros, by NAME. */
export function headerDefines(prefix: string): Record<string, number> {
  return defines(BPF_HEADER, prefix);
}

/** The member names of the shim's `enum <name> { … }`, in order. */
export function shimEnum(name: string): string[] {
  const text = Deno.readTextFileSync(SHIM_SOURCE);
  const body = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(text)?.[1];
  if (!body) throw new Error(`No enum ${name} in ${SHIM_SOURCE.pathname}`);
  return [...body.replace(/\/\*[^]*?\*\//g, "").matchAll(/(\w+)\s*,/g)].map((m) => m[1]);
}

/**
 * Byte offsets of the leading `__u8`…`__u64` members of the shared header's `struct <name>`, by
 * member name, each at its natural alignment as the C compilers place it; the first member of
 * another type ends them.
 */
export function headerStructOffsets(name: string): Record<string, number> {
  const text = Deno.readTextFileSync(BPF_HEADER);
  const body = new RegExp(`^struct ${name} \\{([^}]*)\\};`, "m").exec(text)?.[1];
  if (!body) throw new Error(`No struct ${name} in ${BPF_HEADER.pathname}`);
  const offsets: Record<string, number> = {};
  let at = 0;
  for (const line of body.replace(/\/\*[^]*?\*\//g, "").split(";")) {
    const m = /^\s*__u(8|16|32|64)\s+(\w+)\s*$/.exec(line);
    if (!m) break;
    const size = Number(m[1]) / 8;
    at = Math.ceil(at / size) * size;
    offsets[m[2]] = at;
    at += size;
  }
  return offsets;
}
