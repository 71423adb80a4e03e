#!/usr/bin/env bash
# The host's real agent state, one line per file: what `make test` must leave as it found it.
# The defaults of cli/config.ts: spool, pinned maps and capture, instance lock.
set -uo pipefail
for path in /var/lib/flowexporter /sys/fs/bpf/flowexporter /run/flowexporter.lock; do
  if [[ -e "$path" ]]; then
    find "$path" -printf '%p %y %s %T@\n' 2>/dev/null | sort
  else
    echo "$path absent"
  fi
done
