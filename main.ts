/**
 * flowexporter: records every TCP flow on this host, attributed to a
 * workload identity at capture time.
 *
 * @module
 */
import { parseRunArgs, run, RUN_HELP } from "./cli/run.ts";
import { UsageError } from "./cli/_io.ts";

/** Version of the agent, carried in every batch. */
export const VERSION = "0.1.0";

const HELP = `flowexporter ${VERSION}: per-host TCP flow records from eBPF

Usage: flowexporter <command> [options]

Commands:
  run        capture flows on this host (default output: JSON lines on stdout)
  help       show this help; "flowexporter <command> --help" shows a command's options
`;

async function main(args: string[]): Promise<number> {
  const [command = "help", ...rest] = args;
  switch (command) {
    case "run": {
      const options = parseRunArgs(rest);
      if (options === "help") {
        console.log(RUN_HELP);
        return 0;
      }
      return await run(options);
    }
    case "help":
    case "--help":
    case "-h":
      console.log(HELP);
      return 0;
    case "--version":
      console.log(VERSION);
      return 0;
    default:
      throw new UsageError(`Unknown command ${JSON.stringify(command)} (see flowexporter --help)`);
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    const e = err as Error;
    console.error(`flowexporter: ${e.message}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
