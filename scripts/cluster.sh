#!/usr/bin/env bash
# A local cluster for development: 3 JetStream nats-server nodes and a clickhouse-server on
# loopback, ports picked by the servers, data under build/cluster/ (collector/cluster/local_cluster.ts).
#   scripts/cluster.sh start   starts it and prints FLOWEXPORTER_NATS_URLS and _CLICKHOUSE_URL
#   scripts/cluster.sh stop    stops what `start` started (by PID) and removes its data
#   scripts/cluster.sh env     prints the variables again
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build/cluster
deno=build/tools/node_modules/.bin/deno
case "${1:-}" in
  start)
    if [[ -s $dir/env ]] && kill -0 "$(sed -n 's/^FLOWEXPORTER_CLUSTER_PID=//p' "$dir/env")" 2>/dev/null; then
      echo "cluster.sh: a cluster runs already (scripts/cluster.sh stop first)" >&2
      exit 1
    fi
    make -s build/.cluster-apt-stamp tools
    rm -rf "$dir" && mkdir -p "$dir/data"
    nohup "$deno" run --allow-all collector/cluster/local_cluster.ts "$PWD/$dir/data" \
      > "$dir/env" 2> "$dir/log" < /dev/null &
    pid=$!
    # Wait for the three lines, or for the script to fail (it stops its servers itself).
    until [[ $(grep -c '^FLOWEXPORTER_' "$dir/env") -ge 3 ]]; do
      kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; echo "cluster.sh: cannot start the cluster" >&2; exit 1; }
      sleep 0.2
    done
    cat "$dir/env"
    ;;
  stop)
    [[ -s $dir/env ]] || { echo "cluster.sh: no cluster to stop" >&2; exit 0; }
    pid=$(sed -n 's/^FLOWEXPORTER_CLUSTER_PID=//p' "$dir/env")
    if kill "$pid" 2>/dev/null; then
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -rf "$dir"
    ;;
  env) cat "$dir/env" ;;
  *) echo "usage: scripts/cluster.sh start|stop|env" >&2; exit 2 ;;
esac
