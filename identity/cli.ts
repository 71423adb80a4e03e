/**
 * `flowexporter identity`: write, delete and list entries of the pinned identity maps by hand
 * or from scripts (container start/stop hooks).
 *
 * @example
 * ```ts
 * import { runIdentityCommand } from "./cli.ts";
 * const code = await runIdentityCommand(Deno.args, openPinnedMaps); // openPinnedMaps: identity/mod.ts
 * Deno.exit(code);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  encodeIpKey,
  encodePortKey,
  encodeWorkload,
  FE_WORKLOAD_ID_LEN,
  IP_WORKLOAD_MAP,
  MapLayoutError,
  MAPS_PIN_DIR,
  parsePort,
  PORT_WORKLOAD_MAP,
} from "../lib/map_layout.ts";
import type { IdentityMaps } from "../lib/map_layout.ts";
import { type WorkloadEntry, WorkloadMaps } from "./workload_maps.ts";
import { errorText } from "../lib/error_text.ts";
import type { CommandOutput } from "../lib/options.ts";
import { UsageError } from "../lib/usage_error.ts";

/** Exit statuses of `runIdentityCommand`. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

const SEE_HELP = "(see flowexporter identity --help)";

/** The `--help` text. */
export const IDENTITY_USAGE = `Usage: flowexporter identity <command> [options]

Attribute local TCP sockets to workloads by writing the agent's pinned identity maps
(${MAPS_PIN_DIR}/${IP_WORKLOAD_MAP} and ${PORT_WORKLOAD_MAP}). A socket's workload is the
port entry for its (IPv4 address, port), else the IP entry for its address, else the host
identity from the certificate, else unknown. The agent must be running (it pins the maps).

Commands:
  set-ip IP WORKLOAD           Attribute sockets on local address IP (IPv4 or IPv6) to WORKLOAD
  delete-ip IP                 Remove the entry for IP
  set-port IPV4 PORT WORKLOAD  Attribute IPv4 sockets on (IPV4, PORT) to WORKLOAD
  delete-port IPV4 PORT        Remove the entry for (IPV4, PORT)
  list                         Show every entry and how full each map is

Options:
  --pin-dir DIR  bpffs directory of the maps (default ${MAPS_PIN_DIR})
  --json         list: print JSON instead of a table
  --if-exists    delete-ip, delete-port: succeed when there is no such entry
  -h, --help     Show this help

WORKLOAD is 1 to ${
  FE_WORKLOAD_ID_LEN - 1
} bytes of UTF-8 without control characters or surrounding spaces.
Whoever sets an entry deletes it when the workload stops.
Exit status: 0 done, 1 failed (maps unavailable, no such entry), 2 invalid arguments.`;

const defaultOutput: CommandOutput = {
  stdout: (text) => console.log(text),
  stderr: (text) => console.error(text),
};

/**
 * Runs `flowexporter identity ARGS…`. Arguments are validated before the maps are opened, so
 * invalid input never needs root and never touches a map.
 *
 * @param args the arguments after `identity`.
 * @param openMaps opens the pinned maps in the given bpffs directory (`--pin-dir`, default
 * `MAPS_PIN_DIR`); the agent passes its FFI-backed `openPinnedMaps`. The command closes them.
 * @param out defaults to the process's stdout and stderr.
 * @returns the exit status: 0 done, 1 failed, 2 invalid arguments.
 */
export async function runIdentityCommand(
  args: string[],
  openMaps: (pinDir: string) => IdentityMaps | Promise<IdentityMaps>,
  out: CommandOutput = defaultOutput,
): Promise<number> {
  let action: Action;
  try {
    action = parse(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    out.stderr(error.message);
    return EXIT.usage;
  }
  if (action.kind === "help") {
    out.stdout(IDENTITY_USAGE);
    return EXIT.ok;
  }
  let maps: WorkloadMaps;
  try {
    const opened = await openMaps(action.pinDir);
    try {
      maps = new WorkloadMaps(opened);
    } catch (error) {
      opened.ip.close();
      opened.port.close();
      throw error;
    }
  } catch (error) {
    out.stderr(errorText(error));
    return EXIT.failed;
  }
  try {
    return action.run(maps, out);
  } catch (error) {
    out.stderr(errorText(error));
    return EXIT.failed;
  } finally {
    maps.close();
  }
}

type Run = (maps: WorkloadMaps, out: CommandOutput) => number;
type Action = { kind: "help" } | { kind: "run"; pinDir: string; run: Run };

/** Parses and validates everything that can be checked without the maps. */
function parse(args: string[]): Action {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: "boolean", short: "h" },
        json: { type: "boolean" },
        "if-exists": { type: "boolean" },
        "pin-dir": { type: "string", default: MAPS_PIN_DIR },
      },
    });
  } catch (error) {
    // parseArgs appends a long hint after the first sentence; keep the first sentence.
    throw new UsageError(`${errorText(error).split(". ")[0].replace(/\.$/, "")} ${SEE_HELP}`);
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.help || command === "help") return { kind: "help" };
  if (command === undefined) throw new UsageError(`Missing command ${SEE_HELP}`);
  if (values.json && command !== "list") {
    throw new UsageError(`Option --json applies to list only ${SEE_HELP}`);
  }
  const ifExists = values["if-exists"] === true;
  if (ifExists && command !== "delete-ip" && command !== "delete-port") {
    throw new UsageError(
      `Option --if-exists applies to delete-ip and delete-port only ${SEE_HELP}`,
    );
  }
  return { kind: "run", pinDir: values["pin-dir"], run: commandRun(command, rest, values) };
}

/** The validated command, ready to run on the maps. */
function commandRun(
  command: string,
  rest: string[],
  values: { json?: boolean; "if-exists"?: boolean },
): Run {
  const ifExists = values["if-exists"] === true;
  switch (command) {
    case "set-ip": {
      const [ip, workload] = operands(command, rest, ["IP", "WORKLOAD"]);
      validate(() => [encodeIpKey(ip), encodeWorkload(workload)]);
      return run((maps) => maps.setIp(ip, workload));
    }
    case "delete-ip": {
      const [ip] = operands(command, rest, ["IP"]);
      validate(() => encodeIpKey(ip));
      return run((maps) =>
        maps.deleteIp(ip) || missing(ifExists, `${IP_WORKLOAD_MAP} entry for ${ip}`)
      );
    }
    case "set-port": {
      const [ip, portText, workload] = operands(command, rest, ["IPV4", "PORT", "WORKLOAD"]);
      const port = validate(() => parsePort(portText));
      validate(() => [encodePortKey(ip, port), encodeWorkload(workload)]);
      return run((maps) => maps.setPort(ip, port, workload));
    }
    case "delete-port": {
      const [ip, portText] = operands(command, rest, ["IPV4", "PORT"]);
      const port = validate(() => parsePort(portText));
      validate(() => encodePortKey(ip, port));
      return run((maps) =>
        maps.deletePort(ip, port) ||
        missing(ifExists, `${PORT_WORKLOAD_MAP} entry for ${ip} port ${port}`)
      );
    }
    case "list":
      operands(command, rest, []);
      return (maps, out) => list(maps, out, values.json === true);
    default:
      throw new UsageError(`Unknown command ${JSON.stringify(command)} ${SEE_HELP}`);
  }
}

function operands(command: string, rest: string[], names: string[]): string[] {
  if (rest.length === names.length) return rest;
  const expected = names.length === 0 ? "no arguments" : names.join(" ");
  const got = rest.length === 1 ? "1 argument" : `${rest.length} arguments`;
  throw new UsageError(`${command} takes ${expected}; got ${got} ${SEE_HELP}`);
}

function validate<T>(check: () => T): T {
  try {
    return check();
  } catch (error) {
    if (error instanceof MapLayoutError) throw new UsageError(error.message);
    throw error;
  }
}

function run(change: (maps: WorkloadMaps) => unknown): Run {
  return (maps) => {
    change(maps);
    return EXIT.ok;
  };
}

/** A delete found nothing: fine with --if-exists, a failure otherwise. */
function missing(ifExists: boolean, what: string): true {
  if (ifExists) return true;
  throw new Error(`No ${what} (nothing deleted; pass --if-exists to accept that)`);
}

function list(maps: WorkloadMaps, out: CommandOutput, json: boolean): number {
  const entries = maps.list();
  const fill = maps.fill();
  if (json) {
    out.stdout(JSON.stringify(
      { entries, fill: { [IP_WORKLOAD_MAP]: fill.ip, [PORT_WORKLOAD_MAP]: fill.port } },
      null,
      2,
    ));
    return EXIT.ok;
  }
  const lines: string[] = [];
  if (entries.length === 0) {
    lines.push("No entries");
  } else {
    const rows = [["KIND", "ADDRESS", "PORT", "WORKLOAD"], ...entries.map(row)];
    const widths = [0, 1, 2].map((c) => Math.max(...rows.map((r) => r[c].length)));
    for (const r of rows) {
      lines.push(r.map((cell, c) => c < 3 ? cell.padEnd(widths[c]) : cell).join("  ").trimEnd());
    }
  }
  lines.push(
    `${IP_WORKLOAD_MAP}: ${fill.ip.entries} of ${fill.ip.maxEntries} entries; ` +
      `${PORT_WORKLOAD_MAP}: ${fill.port.entries} of ${fill.port.maxEntries} entries`,
  );
  out.stdout(lines.join("\n"));
  return EXIT.ok;
}

function row(entry: WorkloadEntry): string[] {
  const port = entry.kind === "port" ? String(entry.port) : "-";
  // An entry with a problem may hold anything: quote it so it stays on one line.
  const workload = entry.problem === undefined
    ? entry.workload
    : `${JSON.stringify(entry.workload)} (unusable: ${entry.problem})`;
  return [entry.kind, entry.ip, port, workload];
}
