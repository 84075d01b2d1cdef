# Sourced by scripts/run.sh and scripts/run-cluster.sh: the process bookkeeping both share. Defines
# RUN and LOGS (under .state/), refuses to start while a recorded process still runs, stops everything
# started (newest first, then any nats-server node restarted by hand through its pid file) on Ctrl-C,
# SIGTERM or exit, and `start NAME READY-TEXT COMMAND…` to start one process and wait for its ready line.

RUN=.state/run
LOGS=.state/logs
mkdir -p "$RUN" "$LOGS"

# `make run` and `make run-cluster` use the same ports: one at a time.
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
  # Newest first: the chatbot and edges, then the services, then NATS.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  for f in "$RUN"/nats-server*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$RUN"/*.pid
  echo "stopped"
}
trap cleanup INT TERM EXIT

# Wait (bounded, 10 s) until file $1 contains the fixed string $2; otherwise show its tail and exit.
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

# Start a goim process in the background (stdout to $LOGS/NAME.out, where its ready line appears;
# stderr to the terminal and $LOGS/NAME.log), record its pid, wait for its ready text.
start() {
  local name=$1 ready=$2; shift 2
  : > "$LOGS/$name.out"
  "$@" >"$LOGS/$name.out" 2> >(tee -a "$LOGS/$name.log" >&2) &
  pids+=($!); echo $! > "$RUN/$name.pid"
  await_line "$LOGS/$name.out" "$ready" "$name"
}

# Start nats-server with config $2 as NAME $1 (log in $LOGS/NAME.log) without waiting for it.
start_nats() {
  local name=$1 conf=$2
  : > "$LOGS/$name.log"
  "$NATS_SERVER_BIN" -c "$conf" >"$LOGS/$name.log" 2>&1 &
  pids+=($!); echo $! > "$RUN/$name.pid"
}
