/**
 * flowexporter: records every TCP flow on this host, attributed to a
 * workload identity at capture time.
 *
 * @module
 */
// Each command's modules load when it runs: the agent, which runs on every host, does not hold
// the collector's (HTTP server, SQLite, attribution) in its heap.
import { errorText } from "./lib/error_text.ts";
import { UsageError } from "./lib/usage_error.ts";
import { VERSION } from "./lib/version.ts";

const HELP = `flowexporter ${VERSION}: per-host TCP flow records from eBPF

Usage: flowexporter <command> [options]

Commands:
  run           capture flows on this host (JSON lines on stdout, CBOR batches to the spool/collector)
  detach        stop capturing for good: a stopped agent's programs stay attached for its next start
  identity      set, delete and list workload identities in the pinned maps
  collector     run the reference collector (HTTP ingest, SQLite, remote-side attribution);
                "collector check" validates its configuration
  query         list attributed flows from a collector's database
  graph         the workload dependency map of a collector's database (JSON or Graphviz DOT)
  config check  validate a configuration and print the effective one
  doctor        check this host's readiness and explain what to fix
  dev           the agent and a local collector together (deno task dev; --cluster: a
                cluster node on a local NATS cluster and ClickHouse)
  help          this help; "flowexporter <command> --help" shows a command's options
`;

async function main(args: string[]): Promise<number> {
  const [command = "help", ...rest] = args;
  switch (command) {
    case "run": {
      const [{ loadConfig }, { run, RUN_HELP }] = await Promise.all([
        import("./cli/config.ts"),
        import("./cli/run.ts"),
      ]);
      const config = loadConfig(rest, Deno.env.toObject());
      if (config.help) {
        console.log(RUN_HELP);
        return 0;
      }
      return await run(config.values);
    }
    case "detach": {
      const [{ loadConfig }, { detach, DETACH_HELP }] = await Promise.all([
        import("./cli/config.ts"),
        import("./cli/detach.ts"),
      ]);
      const config = loadConfig(rest, Deno.env.toObject());
      if (config.help) {
        console.log(DETACH_HELP);
        return 0;
      }
      return detach(config.values);
    }
    case "dev":
      return await (await import("./cli/dev.ts")).runDev(rest);
    case "identity": {
      const [{ runIdentityCommand }, { openPinnedMaps }] = await Promise.all([
        import("./identity/mod.ts"),
        import("./identity/ffi.ts"),
      ]);
      return await runIdentityCommand(rest, openPinnedMaps);
    }
    case "collector":
      return await (await import("./collector/cli.ts")).runCollector(rest);
    case "query":
      return await (await import("./collector/query.ts")).runQuery(rest);
    case "graph":
      return await (await import("./collector/graph_cli.ts")).runGraph(rest);
    case "config":
      if (rest[0] !== "check") {
        throw new UsageError(
          `Unknown config command ${JSON.stringify(rest[0] ?? "")} (use flowexporter config check)`,
        );
      }
      return await (await import("./cli/config.ts")).runConfigCheck(rest.slice(1));
    case "doctor":
      return await (await import("./cli/doctor.ts")).runDoctor(rest);
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
  } catch (error) {
    console.error(`flowexporter: ${errorText(error)}`);
    Deno.exit(error instanceof UsageError ? 2 : 1);
  }
}
