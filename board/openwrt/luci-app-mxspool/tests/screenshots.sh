#!/usr/bin/env bash
# Remakes the README's LuCI screenshots, docs/images/luci-settings.png and
# docs/images/luci-queue.png, from the real views (not a test; not in CI):
#   1. capture-queue.py starts the real daemon ($MXSPOOL_BIN, default
#      target/debug/mxspool: `cargo build` first) with a primary that has no
#      route, queues two messages over SMTP, and saves `queue list --json`
#      and `queue stats --json`;
#   2. render-page.js loads settings.js and queue.js with the tests' LuCI
#      stand-ins (luci-env.js), the Queue page answered by those files, the
#      Settings page by screenshot-uci.json, and writes static HTML styled by
#      screenshot.css (an approximation: LuCI's own CSS is not available
#      offline);
#   3. headless Chromium (Debian package chromium) takes the PNGs.
# usage: board/openwrt/luci-app-mxspool/tests/screenshots.sh [OUTDIR]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../../.." && pwd)
OUT=${1:-$ROOT/docs/images}
BIN=${MXSPOOL_BIN:-$ROOT/target/debug/mxspool}
CHROMIUM=${CHROMIUM:-chromium}
MAX_BYTES=204800

[ -x "$BIN" ] || { echo "no $BIN: run cargo build (or set MXSPOOL_BIN)" >&2; exit 1; }
for tool in "$CHROMIUM" node python3; do
	command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install chromium nodejs python3)" >&2; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

MXSPOOL_BIN=$BIN python3 "$HERE/capture-queue.py" "$TMP"
cp "$HERE/screenshot.css" "$TMP/"
node "$HERE/render-page.js" settings "$HERE/screenshot-uci.json" >"$TMP/settings.html"
node "$HERE/render-page.js" queue "$HERE/screenshot-uci.json" "$TMP/queue-list.json" "$TMP/queue-stats.json" >"$TMP/queue.html"

shot() { # PAGE WIDTH,HEIGHT
	"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
		--user-data-dir="$TMP/chromium" --window-size="$2" \
		--screenshot="$TMP/$1.png" "file://$TMP/$1.html" >"$TMP/chromium.log" 2>&1 ||
		{ cat "$TMP/chromium.log" >&2; exit 1; }
	size=$(wc -c <"$TMP/$1.png")
	[ "$size" -lt "$MAX_BYTES" ] || { echo "$1.png is $size bytes (limit $MAX_BYTES)" >&2; exit 1; }
	mkdir -p "$OUT"
	cp "$TMP/$1.png" "$OUT/luci-$1.png"
	echo "$OUT/luci-$1.png: $size bytes"
}
shot settings 1280,1440
shot queue 1280,880
