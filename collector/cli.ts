/**
 * `flowexporter collector`: runs the reference collector until SIGINT or SIGTERM.
 *
 * @example
 * ```sh
 * flowexporter collector --listen 127.0.0.1:9470 --db flows.db --token-file /etc/flowexporter/token
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Log, LOG_FORMATS, LOG_LEVELS } from "../lib/log.ts";
import { DEFAULT_PORT, startCollector } from "./server.ts";
import { DEFAULT_DB_PATH } from "./store.ts";

const HELP = `Usage: flowexporter collector [options]

Receives flow batches from exporters (POST /v1/batches), attributes the remote end of each
flow to a workload from the other hosts' heartbeats, and stores them in SQLite. Query with
\`flowexporter query\` or GET /v1/flows. Stops cleanly on SIGINT or SIGTERM.

Options:
  --listen HOST:PORT              address to listen on (default 127.0.0.1:${DEFAULT_PORT};
                                  [::1]:PORT for IPv6, :PORT for every interface)
  --db PATH                       SQLite database, created if missing (default ${DEFAULT_DB_PATH})
  --token-file PATH               require Authorization: Bearer <the file's content>
  --max-body-bytes N              largest compressed body (default 16777216)
  --max-decompressed-bytes N      largest decompressed body (default 67108864)
  --hold-seconds N                how long a flow waits for its remote owner (default 120)
  --max-held N                    most flows waiting at once (default 100000)
  --merge-gap-seconds N           heartbeats of a workload this close merge (default 30)
  --slack-seconds N               clock-skew tolerance around ownership (default 1)
  --retention-seconds N           how long ownership is remembered (default 3600)
  --tls-cert PATH, --tls-key PATH serve HTTPS with this PEM certificate and key
  --log-format FORMAT             ${LOG_FORMATS.join(" or ")} (default text)
  --log-level LEVEL               ${LOG_LEVELS.join(", ")} (default info; debug logs each batch)
  -h, --help                      show this help
`;

/**
 * Runs `flowexporter collector` with `args` (the words after `collector`).
 *
 * @returns the exit code: 0 after a clean stop, 2 for bad arguments, 1 when it cannot start
 */
export async function runCollector(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        listen: { type: "string", default: `127.0.0.1:${DEFAULT_PORT}` },
        db: { type: "string", default: DEFAULT_DB_PATH },
        "token-file": { type: "string" },
        "max-body-bytes": { type: "string" },
        "max-decompressed-bytes": { type: "string" },
        "hold-seconds": { type: "string" },
        "max-held": { type: "string" },
        "merge-gap-seconds": { type: "string" },
        "slack-seconds": { type: "string" },
        "retention-seconds": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "log-format": { type: "string", default: "text" },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    console.error(`${(error as Error).message} (see flowexporter collector --help)`);
    return 2;
  }
  if (values.help) {
    console.log(HELP.trimEnd());
    return 0;
  }
  let listen: { hostname: string; port: number };
  let numbers: Record<string, number | undefined>;
  let log: Log;
  try {
    log = new Log({
      format: oneOf(values["log-format"], LOG_FORMATS, "--log-format"),
      level: oneOf(values["log-level"], LOG_LEVELS, "--log-level"),
      write: (line) => console.error(line),
    });
    listen = parseListen(values.listen);
    numbers = {
      maxBodyBytes: number(values, "max-body-bytes", 1),
      maxDecompressedBytes: number(values, "max-decompressed-bytes", 1),
      holdSeconds: number(values, "hold-seconds", 0),
      maxHeld: number(values, "max-held", 0),
      mergeGapSeconds: number(values, "merge-gap-seconds", 0),
      slackSeconds: number(values, "slack-seconds", 0),
      retentionSeconds: number(values, "retention-seconds", 1),
    };
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  let collector;
  try {
    collector = await startCollector({
      dbPath: values.db,
      ...listen,
      tokenFile: values["token-file"],
      tlsCertFile: values["tls-cert"],
      tlsKeyFile: values["tls-key"],
      logger: log.logger,
      ...numbers,
    });
  } catch (error) {
    log.error((error as Error).message);
    return 1;
  }
  log.info(`collector listening on ${collector.url}`, { db: values.db });
  const stop = Promise.withResolvers<string>();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const listeners = signals.map((signal) => {
    const listener = () => stop.resolve(signal);
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  const signal = await stop.promise;
  for (const [s, listener] of listeners) Deno.removeSignalListener(s, listener);
  log.info("collector stopping", { signal });
  await collector.close();
  return 0;
}

/** `host:port`, `[v6]:port` or `:port` (every interface). */
function parseListen(text: string): { hostname: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):([0-9]{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (match === null || port > 65535) {
    throw new Error(
      `Invalid --listen ${JSON.stringify(text)}: use HOST:PORT, [IPV6]:PORT or :PORT`,
    );
  }
  const hostname = match[1] ?? match[2];
  return { hostname: hostname === "" ? "0.0.0.0" : hostname, port };
}

function number(
  values: Record<string, unknown>,
  flag: string,
  min: number,
): number | undefined {
  const text = values[flag];
  if (text === undefined) return undefined;
  const n = Number(text);
  if (typeof text !== "string" || text.trim() === "" || !Number.isFinite(n) || n < min) {
    throw new Error(`Invalid --${flag} ${JSON.stringify(text)}: use a number >= ${min}`);
  }
  return n;
}

function oneOf<T extends string>(text: string, allowed: readonly T[], flag: string): T {
  if (!allowed.includes(text as T)) {
    throw new Error(`Invalid ${flag} ${JSON.stringify(text)}: use ${allowed.join(", ")}`);
  }
  return text as T;
}
