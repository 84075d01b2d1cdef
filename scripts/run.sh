#!/usr/bin/env bash
# Started by `make run`: nats-server with nats-conf/dev.conf, then goim-history, goim-authsvc,
# goim-edge and the example chatbot with their dev configs (history/goim-history.dev.toml,
# authsvc/goim-authsvc.dev.toml, edge/goim-edge.dev.toml, examples/chatbot/goim-chatbot.dev.toml).
# History first: it provisions the streams the edge asks about at start.
# Stays in the foreground; Ctrl-C (or `make stop` from elsewhere) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=${NATS_SERVER_BIN:-nats-server}
EDGE_BIN=target/release/goim-edge
AUTHSVC_BIN=target/release/goim-authsvc
HISTORY_BIN=target/release/goim-history
CHATBOT_BIN=target/release/goim-chatbot
HISTORY_CONFIG=${HISTORY_CONFIG:-history/goim-history.dev.toml}
EDGE_CONFIG=${EDGE_CONFIG:-edge/goim-edge.dev.toml}
AUTHSVC_CONFIG=${AUTHSVC_CONFIG:-authsvc/goim-authsvc.dev.toml}
CHATBOT_CONFIG=${CHATBOT_CONFIG:-examples/chatbot/goim-chatbot.dev.toml}
RUN=.state/run
LOGS=.state/logs
mkdir -p "$RUN" "$LOGS"

# Also refuses while `make run-cluster` runs (same ports).
for f in "$RUN"/*.pid; do
  [[ -f $f ]] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then
    echo "already running ($(basename "$f" .pid), pid $(cat "$f")); use 'make stop' first" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$RUN"/*.pid
  echo "stopped"
}
trap cleanup INT TERM EXIT

# Wait (bounded) until file $1 contains the fixed string $2.
await_line() {
  local file=$1 text=$2 what=$3
  for _ in $(seq 1 200); do
    grep -qF "$text" "$file" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$what did not start; see $file" >&2
  tail -n 20 "$file" >&2
  exit 1
}

: > "$LOGS/nats-server.log"
"$NATS_SERVER_BIN" -c nats-conf/dev.conf >"$LOGS/nats-server.log" 2>&1 &
pids+=($!); echo $! > "$RUN/nats-server.pid"
await_line "$LOGS/nats-server.log" "Server is ready" nats-server

: > "$LOGS/goim-history.out"
"$HISTORY_BIN" --config "$HISTORY_CONFIG" >"$LOGS/goim-history.out" 2> >(tee -a "$LOGS/goim-history.log" >&2) &
pids+=($!); echo $! > "$RUN/goim-history.pid"
await_line "$LOGS/goim-history.out" "goim-history ready" goim-history

: > "$LOGS/goim-authsvc.out"
"$AUTHSVC_BIN" --config "$AUTHSVC_CONFIG" >"$LOGS/goim-authsvc.out" 2> >(tee -a "$LOGS/goim-authsvc.log" >&2) &
pids+=($!); echo $! > "$RUN/goim-authsvc.pid"
await_line "$LOGS/goim-authsvc.out" "goim-authsvc ready" goim-authsvc

: > "$LOGS/goim-edge.out"
"$EDGE_BIN" --config "$EDGE_CONFIG" >"$LOGS/goim-edge.out" 2> >(tee -a "$LOGS/goim-edge.log" >&2) &
pids+=($!); echo $! > "$RUN/goim-edge.pid"
await_line "$LOGS/goim-edge.out" "goim-edge ready" goim-edge

# The example chatbot (examples/chatbot): answers op-4 messages into their room, so the demo page's
# "Send" shows a reply.
: > "$LOGS/goim-chatbot.out"
"$CHATBOT_BIN" --config "$CHATBOT_CONFIG" >"$LOGS/goim-chatbot.out" 2> >(tee -a "$LOGS/goim-chatbot.log" >&2) &
pids+=($!); echo $! > "$RUN/goim-chatbot.pid"
await_line "$LOGS/goim-chatbot.out" "goim-chatbot ready" goim-chatbot

cat <<MSG

  goim-nats is running (development credentials: see README, "Credentials").
    $(cat "$LOGS/goim-history.out")
    $(cat "$LOGS/goim-authsvc.out")
    $(cat "$LOGS/goim-edge.out")
    $(cat "$LOGS/goim-chatbot.out")
    Browser demo page      -> http://127.0.0.1:3111/demo/   (dev only; try room live://1000, then Send /time)
    goim TCP clients       -> 127.0.0.1:3101
    goim WebSocket clients -> ws://127.0.0.1:3102/sub
    authsvc HTTP           -> http://127.0.0.1:3111   (API key: dev-api-key)
    NATS                   -> nats://127.0.0.1:4222   (monitoring http://127.0.0.1:8222, nats.ws ws://127.0.0.1:8080)

  1. Mint a token:
     curl -s -H 'Authorization: Bearer dev-api-key' -d '{"mid":123,"rooms":["live://1000"],"accepts":[1000,1001,1002]}' http://127.0.0.1:3111/auth/token
  2. Connect a goim client with it:
     python3 scripts/goim_client.py --mid 123 --room live://1000 --token <token>
  3. Push (as the backend role):
     nats --user backend --password dev-backend pub -H 'Goim-Op:1000' room.live.1000 '{"test":1}'
     (without the nats CLI: python3 scripts/nats_pub.py --user backend --password dev-backend -H Goim-Op:1000 room.live.1000 '{"test":1}')
  4. Or receive natively with the same token: nats --token <token> sub user.123
  5. Or open the demo page above: connect, watch step 3's pushes arrive, send a message (the chatbot
     answers into the room), see the online count and the room's history.

  Logs: $LOGS/   Stop: Ctrl-C here, or 'make stop'.

MSG

# Exit (and stop the others) as soon as any process ends.
wait -n "${pids[@]}"
