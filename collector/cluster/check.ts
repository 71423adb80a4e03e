/**
 * `flowexporter collector check --nats URL…`: after the options, checks the cluster itself —
 * that NATS answers, that the streams and durable consumers are configured as nodes need
 * (streams.ts), and that ClickHouse answers when `--clickhouse-url` is given. One line per
 * problem.
 *
 * @module
 */

import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { errorText } from "../../lib/error_text.ts";
import { ClickHouseStore } from "./clickhouse_store.ts";
import { checkStreams, DEFAULT_STREAM_SETTINGS, type StreamSettings } from "./streams.ts";

/** What {@linkcode checkCluster} checks against. */
export interface ClusterCheck {
  natsServers: readonly string[];
  clickhouseUrl?: string;
  streams: Partial<StreamSettings>;
}

/**
 * The problems found, one line each; empty when the cluster is as the nodes need it.
 *
 * @param check the servers and the settings the nodes run with
 */
export async function checkCluster(check: ClusterCheck): Promise<string[]> {
  const problems: string[] = [];
  const settings = { ...DEFAULT_STREAM_SETTINGS, ...check.streams };
  let nc;
  try {
    nc = await connect({ servers: [...check.natsServers], timeout: 5000 });
  } catch (error) {
    return [
      `Cannot connect to NATS at ${check.natsServers.join(",")}: ${
        errorText(error)
      } (check --nats)`,
    ];
  }
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    problems.push(...await checkStreams(jsm, settings));
  } catch (error) {
    problems.push(
      `Cannot use JetStream: ${errorText(error)} (is JetStream enabled on the servers?)`,
    );
  } finally {
    await nc.close();
  }
  if (check.clickhouseUrl !== undefined) {
    try {
      await using store = await ClickHouseStore.open(check.clickhouseUrl, { readOnly: true });
      await store.countFlows();
    } catch (error) {
      problems.push(errorText(error));
    }
  }
  return problems;
}
