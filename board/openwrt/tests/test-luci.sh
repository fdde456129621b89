#!/bin/sh
# board/openwrt/tests/test-luci.sh — the checks of luci-app-mxspool and
# prometheus-node-exporter-lua-mxspool that need no daemon (seconds):
#   * every JSON file parses (python3 -m json.tool), every JS file compiles
#     (node --check), the collector compiles (luac5.1 -p);
#   * luci-app-mxspool/tests/static.test.js (node --test): the menu points at
#     existing views, the ACL grants exactly the commands the views run, the
#     Settings page has a field for every option src/config knows;
#   * the collector under lua5.1 on a stats object with every key.
# The views and the collector fed by the real daemon are
# tests/integration/test_openwrt_ui.py (part of the integration suite).
# Prints "N passed, N failed"; exits 1 if anything failed.

HERE=$(cd "$(dirname "$0")" && pwd)
BOARD=$(cd "$HERE/.." && pwd)
APP=$BOARD/luci-app-mxspool
METRICS=$BOARD/prometheus-node-exporter-lua-mxspool
COLLECTOR=$METRICS/files/usr/lib/lua/prometheus-collectors/mxspool.lua

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

pass=0
fail=0
check() { # NAME COMMAND...
	name=$1; shift
	if out=$("$@" 2>&1); then
		pass=$((pass + 1)); printf 'ok   %s\n' "$name"
	else
		fail=$((fail + 1)); printf 'FAIL %s\n' "$name"; printf '%s\n' "$out" | sed 's/^/     /'
	fi
}

for tool in node python3 lua5.1 luac5.1; do
	command -v "$tool" >/dev/null 2>&1 || { echo "FAIL $tool is not installed (tests/run.sh installs it)"; exit 1; }
done

for f in $(find "$APP" "$METRICS" -name '*.json' | sort); do
	check "json: ${f#"$BOARD"/}" python3 -m json.tool "$f"
done
for f in $(find "$APP" -name '*.js' | sort); do
	check "node --check: ${f#"$BOARD"/}" node --check "$f"
done
for f in "$COLLECTOR" "$METRICS/tests/run-collector.lua"; do
	check "luac5.1 -p: ${f#"$BOARD"/}" luac5.1 -p "$f"
done

check "node --test static.test.js" node --test "$APP/tests/static.test.js"

# Every key `queue stats --json` has (README), escapes and nesting included.
cat >"$TMP/stats.json" <<'JSON'
{"accepted":7,"rejected":{"relay":2,"bare_newline":1},"delivered":3,"deferred":4,"bounced":1,"queued":2,"oldest_age":95,"spool_bytes":8192,"max_spool_size":67108864,"guard_refusals":1,"callahead":{"accepted":5,"cache_hit":2},"unreachable":{"mail.example.com:25":120,"[2001:db8::1]:2525":5},"uptime":600}
JSON
collector_sample() { # STATS LINE: the collector's output has LINE
	lua5.1 "$METRICS/tests/run-collector.lua" "$COLLECTOR" "$1" >"$TMP/out" || return 1
	grep -qxF "$2" "$TMP/out" || { echo "no line '$2' in:"; cat "$TMP/out"; return 1; }
}
check "collector: queue gauge" collector_sample "$TMP/stats.json" "mxspool_queue_messages 2"
check "collector: rejected by reason" collector_sample "$TMP/stats.json" 'mxspool_rejected_total{reason="bare_newline"} 1'
check "collector: unreachable destination" collector_sample "$TMP/stats.json" 'mxspool_destination_unreachable_seconds{destination="[2001:db8::1]:2525"} 5'
check "collector: guard refusals counter" collector_sample "$TMP/stats.json" "# TYPE mxspool_guard_refusals_total counter"
printf 'not json' >"$TMP/bad.json"
check "collector: unreadable stats are mxspool_up 0" collector_sample "$TMP/bad.json" "mxspool_up 0"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
