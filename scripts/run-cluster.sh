#!/usr/bin/env bash
# Started by `make run-cluster`: a three-node nats-server cluster (nats-conf/cluster/n{1,2,3}.conf,
# JetStream on every node), then goim-history with R3 streams (history/goim-history.cluster.toml),
# goim-authsvc (nats-conf/cluster/goim-authsvc.toml, the auth callout of every node) and two edges
# (nats-conf/cluster/goim-edge-{1,2}.toml), each given the URLs of all three nodes.
# Stays in the foreground; Ctrl-C (or `make stop` / `make stop-cluster` from elsewhere) stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=${NATS_SERVER_BIN:-nats-server}
EDGE_BIN=target/release/goim-edge
AUTHSVC_BIN=target/release/goim-authsvc
HISTORY_BIN=target/release/goim-history
HISTORY_CONFIG=${HISTORY_CONFIG:-history/goim-history.cluster.toml}
AUTHSVC_CONFIG=${AUTHSVC_CONFIG:-nats-conf/cluster/goim-authsvc.toml}
source scripts/lib.sh

for i in 1 2 3; do start_nats "nats-server-$i" "nats-conf/cluster/n$i.conf"; done
for i in 1 2 3; do await_line "$LOGS/nats-server-$i.log" "Server is ready" "nats-server n$i"; done

# R3 streams need all three JetStream peers: wait (bounded) for a meta leader seeing two current
# followers, through the monitoring endpoint of every node.
python3 - <<'PY' || { echo "the cluster did not form; see $LOGS/nats-server-*.log" >&2; exit 1; }
import json, sys, time, urllib.request
deadline = time.time() + 30
while time.time() < deadline:
    try:
        metas = [json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/jsz", timeout=2))["meta_cluster"]
                 for p in (8222, 8223, 8224)]
        leaders = {m.get("leader") for m in metas}
        lead = [m for m in metas if m.get("leader") and len(leaders) == 1
                and sum(1 for r in m.get("replicas", []) if r.get("current")) == 2]
        if len(leaders) == 1 and None not in leaders and lead:
            print(f"cluster formed: JetStream meta leader {leaders.pop()}")
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
PY

start goim-history "goim-history ready" "$HISTORY_BIN" --config "$HISTORY_CONFIG"
start goim-authsvc "goim-authsvc ready" "$AUTHSVC_BIN" --config "$AUTHSVC_CONFIG"
start goim-edge-1 "goim-edge ready" "$EDGE_BIN" --config nats-conf/cluster/goim-edge-1.toml
start goim-edge-2 "goim-edge ready" "$EDGE_BIN" --config nats-conf/cluster/goim-edge-2.toml

cat <<MSG

  goim-nats is running on a three-node NATS cluster (development credentials: see README, "Credentials").
    $(cat "$LOGS/goim-history.out")
    $(cat "$LOGS/goim-authsvc.out")
    $(cat "$LOGS/goim-edge-1.out")
    $(cat "$LOGS/goim-edge-2.out")
    goim TCP clients       -> 127.0.0.1:3101 (edge1), 127.0.0.1:3201 (edge2)
    goim WebSocket clients -> ws://127.0.0.1:3102/sub (edge1), ws://127.0.0.1:3202/sub (edge2)
    SSE / long-poll        -> http://127.0.0.1:3104/sse (edge1), http://127.0.0.1:3204/sse (edge2)   (/metrics, /healthz)
    authsvc HTTP           -> http://127.0.0.1:3111   (API key: dev-api-key)
    NATS                   -> nats://127.0.0.1:4222, :4223, :4224 (monitoring http://127.0.0.1:8222, :8223, :8224;
                              nats.ws ws://127.0.0.1:8080, :8081, :8082; routes 6222-6224)

  Streams are R3: see their leader with  curl -s 'http://127.0.0.1:8222/jsz?streams=true'
  or  nats --user admin --password dev-admin stream info GOIM_ROOMS.
  Kill a node:  kill -9 \$(cat $RUN/nats-server-2.pid)   and watch the edges move; restart it with
    $NATS_SERVER_BIN -c nats-conf/cluster/n2.conf >>$LOGS/nats-server-2.log 2>&1 & echo \$! > $RUN/nats-server-2.pid
  (the pid file lets Ctrl-C and 'make stop' stop it too).

  Logs: $LOGS/   Stop: Ctrl-C here, or 'make stop'.

MSG

# Exit (and stop the rest) as soon as a goim process ends; a dead NATS node is a fault to survive, so
# only the services are waited for.
wait -n "${pids[@]:3}"
