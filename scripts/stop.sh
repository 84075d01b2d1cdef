#!/usr/bin/env bash
# `make stop` / `make stop-cluster`: stop what scripts/run.sh or scripts/run-cluster.sh started, by
# their pid files: the chatbot and edges first, then authsvc and history, then the nats-server node(s).
set -uo pipefail
cd "$(dirname "$0")/.."
found=0
shopt -s nullglob
for f in .state/run/goim-chatbot.pid .state/run/goim-edge*.pid .state/run/goim-authsvc.pid .state/run/goim-history.pid .state/run/nats-server*.pid; do
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    found=1
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$f"
done
[[ $found == 1 ]] && echo "stopped" || echo "nothing running"
