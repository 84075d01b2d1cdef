#!/usr/bin/env bash
# The long fuzz: every target for SECONDS (default 480) one after another, at the lowest CPU priority.
# New inputs go to a scratch corpus (WORK, default /tmp/goim-fuzz-corpus/<target>); the committed seed
# corpus (fuzz/corpus/<target>) is only read. Logs: $WORK/<target>.log. Crashes: fuzz/artifacts/<target>/.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-480}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(packet_stream packet_frame ws_message ws_frames auth_body token_verify)
WORK=${WORK:-/tmp/goim-fuzz-corpus}
cargo +nightly fuzz build
for t in "${TARGETS[@]}"; do
  case $t in
    packet_*|ws_*) max_len=20000 ;;  # room for whole sessions and 4112-byte packets
    *) max_len=4096 ;;
  esac
  mkdir -p "$WORK/$t"
  echo "== $t: ${SECONDS_PER_TARGET}s, log $WORK/$t.log"
  nice -n 19 cargo +nightly fuzz run "$t" "$WORK/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$max_len" -print_final_stats=1 >"$WORK/$t.log" 2>&1 \
    || echo "!! $t stopped with a finding: see $WORK/$t.log and artifacts/$t/"
  grep -E "^(#[0-9]+: )?Done|stat::number_of_executed_units|stat::peak_rss_mb" "$WORK/$t.log" || true
  grep -E "^#[0-9]+" "$WORK/$t.log" | tail -1 || true
done
