/**
 * `flowexporter dev` (`deno task dev`): the agent and a local reference
 * collector together against the local kernel, everything under build/dev/.
 *
 * @module
 */
import { startCollector } from "../collector/server.ts";
import { run } from "./run.ts";
import { type Config, loadConfig } from "./config.ts";

/** Where `dev` keeps its database, spool and lock. */
export const DEV_DIR = new URL("../build/dev/", import.meta.url).pathname;

/**
 * Starts a collector on 127.0.0.1 (a free port), then the agent shipping
 * 10-second batches to it; `args` are `run` options and override these.
 */
export async function runDev(args: string[]): Promise<number> {
  await Deno.mkdir(DEV_DIR, { recursive: true });
  await using collector = await startCollector({ dbPath: `${DEV_DIR}flows.db`, port: 0 });
  const defaults = [
    "--collector-url",
    `${collector.url}/v1/batches`,
    "--spool-dir",
    `${DEV_DIR}spool`,
    "--lock-file",
    `${DEV_DIR}lock`,
    "--batch-interval",
    "10s",
    "--output",
    "json",
  ];
  const config: Config = loadConfig([...defaults, ...args], Deno.env.toObject()).values;
  console.error(
    `flowexporter dev: collector at ${collector.url}; see attributed flows with: ` +
      `deno run -A main.ts query --db ${DEV_DIR}flows.db`,
  );
  return await run(config);
}
