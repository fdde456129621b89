#!/bin/sh
# shellcheck disable=SC2016 # sh -c '...' scripts expand their own "$1"
# board/openwrt/tests/test-init.sh — checks of the OpenWrt packaging, runnable on
# any Linux host (no OpenWrt needed):
#   * the procd init script: start_service / service_triggers / reload_service are
#     run under sh with stub procd_* and config_* functions that record every call,
#     against the shipped default config and variants of it;
#   * the default UCI config (spool on persistent storage, listen, enabled '0');
#   * sh -n / bash -n and shellcheck over the init script, test.sh and cross/*.sh.
# Prints "N passed, N failed"; exits 1 if anything failed.
#
# Env: SH (default sh) is the shell the init script runs under (e.g. "busybox sh").
#      NO_SHELLCHECK=1 skips shellcheck (it is otherwise required).

HERE=$(cd "$(dirname "$0")" && pwd)
PKG=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$PKG/../.." && pwd)
INIT=$PKG/files/mxspool.init
CONFIG=$PKG/files/mxspool.config
SH=${SH:-sh}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); printf 'ok   %s\n' "$1"; }
ko() { fail=$((fail + 1)); printf 'FAIL %s\n' "$1"; [ -z "$2" ] || printf '%s\n' "$2" | sed 's/^/     /'; }
check() { # NAME COMMAND... : passes when COMMAND succeeds
	name=$1; shift
	if "$@" >"$TMP/out" 2>&1; then ok "$name"; else ko "$name" "$(cat "$TMP/out")"; fi
}

# --- the harness: run ACTIONS of the init script with CONFIG_FILE, record calls --
# Each recorded line is the function name followed by its arguments, each in <>.
cat >"$TMP/harness.sh" <<'EOF'
# usage: . harness.sh  with INIT, CONFIG_FILE, CALLS, RUNNING set; then actions
record() {
	line=$1; shift
	for a in "$@"; do line="$line <$a>"; done
	printf '%s\n' "$line" >>"$CALLS"
}
# config_load: parse the UCI file (sections, options; quotes stripped) into
# "section.option=value" lines, like /lib/functions.sh does into variables.
config_load() {
	record config_load "$@"
	awk '
		function unq(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); if (s ~ /^'\''.*'\''$/ || s ~ /^".*"$/) s = substr(s, 2, length(s) - 2); return s }
		/^[ \t]*#/ { next }
		$1 == "config" { sec = unq($3); if (sec == "") sec = "@" $2 "[" n[$2]++ "]"; next }
		$1 == "option" || $1 == "list" { v = $0; sub(/^[ \t]*(option|list)[ \t]+[^ \t]+[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v); print sec "." $2 "=" unq(v) }
	' "$CONFIG_FILE" >"$CALLS.cfg"
}
config_get() { # VAR SECTION OPTION [DEFAULT]
	record config_get "$@"
	_v=$(grep -m1 "^$2\.$3=" "$CALLS.cfg" | cut -d= -f2-)
	[ -n "$_v" ] || _v=$4
	eval "$1=\$_v"
}
config_get_bool() { # VAR SECTION OPTION [DEFAULT]  (functions.sh semantics)
	record config_get_bool "$@"
	_v=$(grep -m1 "^$2\.$3=" "$CALLS.cfg" | cut -d= -f2-)
	[ -n "$_v" ] || _v=$4
	case "$_v" in
		1|on|true|yes|enabled) _v=1 ;;
		0|off|false|no|disabled) _v=0 ;;
		*) _v=$4 ;;
	esac
	eval "$1=\$_v"
}
procd_open_instance() { record procd_open_instance "$@"; }
procd_set_param() { record procd_set_param "$@"; }
procd_append_param() { record procd_append_param "$@"; }
procd_close_instance() { record procd_close_instance "$@"; }
procd_add_reload_trigger() { record procd_add_reload_trigger "$@"; }
procd_add_interface_trigger() { record procd_add_interface_trigger "delay=$PROCD_RELOAD_DELAY" "$@"; }
extra_command() { record extra_command "$@"; }
procd_send_signal() { record procd_send_signal "$@"; }
procd_kill() { record procd_kill "$@"; }
procd_running() { record procd_running "$@"; [ "$RUNNING" = 1 ]; }
procd_add_restart_mount_trigger() { record procd_add_restart_mount_trigger "$@"; }
logger() { record logger "$@"; }
start() { record start "$@"; start_service "$@"; }
stop() { record stop "$@"; }
# shellcheck disable=SC1090
. "$INIT"
# `mxspool check`: a stand-in that records its arguments and exits CHECK_RC.
PROG=$STUB_PROG
EOF
cat >"$TMP/mxspool" <<'EOF'
#!/bin/sh
line=mxspool; for a in "$@"; do line="$line <$a>"; done
printf '%s\n' "$line" >>"$CALLS"
[ "${CHECK_RC:-0}" = 0 ] || { echo "/etc/config/mxspool:9: option 'hostname': missing" >&2; exit "$CHECK_RC"; }
EOF
chmod +x "$TMP/mxspool"

run() { # CONFIG_FILE RUNNING ACTION... -> calls in $TMP/calls, output in
	# $TMP/run.out, the exit status of the (last) action in $TMP/status
	cfg=$1; running=$2; shift 2
	: >"$TMP/calls"
	actions=$*
	INIT=$INIT CONFIG_FILE=$cfg CALLS=$TMP/calls RUNNING=$running STUB_PROG=$TMP/mxspool \
		$SH -c ". \"$TMP/harness.sh\"; $actions; rc=\$?; echo \"START=\$START STOP=\$STOP USE_PROCD=\$USE_PROCD\" >\"$TMP/vars\"; exit \$rc" \
		>"$TMP/run.out" 2>&1
	echo $? >"$TMP/status"
}
status_is() { # N: the last run()'s action exited N
	[ "$(cat "$TMP/status")" = "$1" ] || { echo "exit status $(cat "$TMP/status"), want $1"; cat "$TMP/run.out"; return 1; }
}
has() { grep -Fx -- "$1" "$TMP/calls" >/dev/null || { echo "missing: $1"; echo "calls:"; cat "$TMP/calls"; return 1; }; }
hasnt() { ! grep -F -- "$1" "$TMP/calls" >/dev/null || { echo "unexpected: $1"; echo "calls:"; cat "$TMP/calls"; return 1; }; }
order() { # A B: first line starting with A comes before first line starting with B
	a=$(grep -n -F -- "$1" "$TMP/calls" | head -n1 | cut -d: -f1)
	b=$(grep -n -F -- "$2" "$TMP/calls" | head -n1 | cut -d: -f1)
	if [ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ]; then return 0; fi
	echo "want '$1' before '$2'"; cat "$TMP/calls"; return 1
}

# Config variants derived from the shipped default, with spool_dir where
# this machine has it (the shipped /usr/var/spool/mxspool is the router's).
mkdir -p "$TMP/mnt/usb"
sed "s|option spool_dir '.*'|option spool_dir '$TMP/mnt/usb/mxspool'|" "$CONFIG" >"$TMP/here.conf"
sed "s/option enabled '0'/option enabled '1'/" "$TMP/here.conf" >"$TMP/enabled.conf"
sed "s/option enabled '0'/option enabled 'yes'/" "$TMP/here.conf" >"$TMP/enabled-yes.conf"
grep -v "option enabled" "$TMP/here.conf" >"$TMP/no-enabled.conf"
sed "s|option spool_dir '.*'|option spool_dir '$TMP/mnt/sdb/mxspool'|" "$TMP/enabled.conf" >"$TMP/unmounted.conf"

# --- header variables -----------------------------------------------------------
check "init: first line is '#!/bin/sh /etc/rc.common'" \
	test "$(head -n1 "$INIT")" = "#!/bin/sh /etc/rc.common"
run "$TMP/enabled.conf" 0 ":"
check "init: START=90 STOP=10 USE_PROCD=1" grep -Fx "START=90 STOP=10 USE_PROCD=1" "$TMP/vars"

# --- enabled: the instance ------------------------------------------------------
run "$TMP/enabled.conf" 0 start_service
check "start_service (enabled): runs cleanly" test ! -s "$TMP/run.out"
check "start_service (enabled): returns 0" status_is 0
check "start_service: loads the mxspool config" has "config_load <mxspool>"
check "start_service: opens instance mxspool" has "procd_open_instance <mxspool>"
# (PROG is the stand-in in these runs: the real path is checked on the file.)
check "init: PROG=/usr/sbin/mxspool" grep -Fx "PROG=/usr/sbin/mxspool" "$INIT"
check "start_service: exact command line" \
	has "procd_set_param <command> <$TMP/mxspool> <run> <-c> </etc/config/mxspool>"
check "start_service: checks the configuration first" order "mxspool <check> <-c> </etc/config/mxspool>" "procd_open_instance"
check "start_service: respawn" has "procd_set_param <respawn>"
check "start_service: file param (restart on config change)" has "procd_set_param <file> </etc/config/mxspool>"
check "start_service: stdout to syslog" has "procd_set_param <stdout> <1>"
check "start_service: stderr to syslog" has "procd_set_param <stderr> <1>"
check "start_service: term_timeout 30" has "procd_set_param <term_timeout> <30>"
check "start_service: closes the instance" has "procd_close_instance"
check "start_service: enabled checked before procd_open_instance" \
	order "config_get_bool <enabled> <main> <enabled>" "procd_open_instance"
check "start_service: params set inside the instance" order "procd_open_instance" "procd_set_param <command>"
check "start_service: instance closed after the params" order "procd_set_param <term_timeout>" "procd_close_instance"
check "start_service: one instance only" test "$(grep -c '^procd_open_instance' "$TMP/calls")" = 1

run "$TMP/enabled-yes.conf" 0 start_service
check "start_service: enabled 'yes' counts as enabled" has "procd_open_instance <mxspool>"

# --- disabled: nothing ----------------------------------------------------------
run "$CONFIG" 0 start_service
check "start_service (shipped config, enabled '0'): starts nothing" hasnt "procd_open_instance"
check "start_service (disabled): sets no params" hasnt "procd_set_param"
check "start_service (disabled): prints nothing" test ! -s "$TMP/run.out"
check "start_service (disabled): returns 0" status_is 0
run "$TMP/no-enabled.conf" 0 start_service
check "start_service (no enabled option): starts, as the daemon default is 1" has "procd_open_instance <mxspool>"

# --- triggers and reload ----------------------------------------------------------
run "$TMP/enabled.conf" 1 service_triggers
check "service_triggers: reload trigger on config mxspool" has "procd_add_reload_trigger <mxspool>"
check "service_triggers: restart when spool_dir's disk is mounted" \
	has "procd_add_restart_mount_trigger <$TMP/mnt/usb/mxspool>"
check "service_triggers: flush 5 s after wan comes up" \
	has "procd_add_interface_trigger <delay=5000> <interface.*.up> <wan> </etc/init.d/mxspool> <flush>"
check "service_triggers: flush 5 s after wan6 comes up" \
	has "procd_add_interface_trigger <delay=5000> <interface.*.up> <wan6> </etc/init.d/mxspool> <flush>"
sed "s/option flush_on_ifup '1'/option flush_on_ifup '0'/" "$TMP/enabled.conf" >"$TMP/no-flush.conf"
run "$TMP/no-flush.conf" 1 service_triggers
check "service_triggers (flush_on_ifup '0'): no interface trigger" hasnt "procd_add_interface_trigger"
check "service_triggers (flush_on_ifup '0'): still the reload trigger" has "procd_add_reload_trigger <mxspool>"
# `flush` runs `mxspool queue flush` when the daemon runs, nothing otherwise.
printf '#!/bin/sh\n{ printf "mxspool"; for a in "$@"; do printf " <%%s>" "$a"; done; echo; } >>"$CALLS"\n' >"$TMP/fake-mxspool"
chmod +x "$TMP/fake-mxspool"
run "$TMP/enabled.conf" 1 "PROG=$TMP/fake-mxspool; flush"
check "flush (running): mxspool queue flush -c /etc/config/mxspool" \
	has "mxspool <queue> <flush> <-c> </etc/config/mxspool>"
check "flush (running): runs cleanly" test ! -s "$TMP/run.out"
run "$TMP/enabled.conf" 0 "PROG=$TMP/fake-mxspool; flush"
check "flush (not running): runs nothing" hasnt "mxspool <queue>"
check "init: declares the flush command" has "extra_command <flush> <Retry all queued mail now>"

# --- spool_dir on a disk that is not mounted; a configuration check that fails --
run "$TMP/unmounted.conf" 0 start_service
check "start_service (spool disk not mounted): starts nothing" hasnt "procd_open_instance"
check "start_service (spool disk not mounted): says so in the log" \
	grep -F "logger <-t> <mxspool> <-p> <daemon.warn> <spool_dir $TMP/mnt/sdb/mxspool is not there (disk not mounted?): mxspool starts when it is mounted>" "$TMP/calls"
check "start_service (spool disk not mounted): returns 0 (the mount trigger starts it)" status_is 0
mkdir -p "$TMP/mnt/sdb"
run "$TMP/unmounted.conf" 0 start_service
check "start_service (disk mounted, spool_dir not made yet): starts" has "procd_open_instance <mxspool>"
CHECK_RC=2 run "$TMP/enabled.conf" 0 start_service
check "start_service (check fails): starts nothing" hasnt "procd_open_instance"
check "start_service (check fails): one log line with check's message" \
	has "logger <-t> <mxspool> <-p> <daemon.err> <not started: /etc/config/mxspool:9: option 'hostname': missing>"
check "start_service (check fails): returns 1" status_is 1
run "$TMP/enabled.conf" 1 reload_service
check "reload_service (running): SIGHUP via procd_send_signal" has "procd_send_signal <mxspool> <*> <HUP>"
check "reload_service (running): no restart" hasnt "procd_open_instance"
run "$TMP/enabled.conf" 0 reload_service
check "reload_service (enabled, not running): starts it" has "procd_open_instance <mxspool>"
run "$CONFIG" 1 reload_service
check "reload_service (disabled): stops it" has "procd_kill <mxspool>"
check "reload_service (disabled): no signal" hasnt "procd_send_signal"
check "reload_service (disabled): no start" hasnt "procd_open_instance"
check "reload_service (disabled): returns 0" status_is 0

# --- the shipped default config ------------------------------------------------
run "$CONFIG" 0 "config_load mxspool"
cfgv() { grep "^$1=" "$TMP/calls.cfg" | cut -d= -f2-; }
check "config: main section has a hostname" test -n "$(cfgv main.hostname)"
spool=$(cfgv main.spool_dir)
check "config: spool_dir set" test -n "$spool"
check "config: spool_dir on persistent storage (not /tmp, /var)" \
	sh -c 'case "$1" in /tmp|/tmp/*|/var|/var/*) echo "spool_dir=$1 is tmpfs on OpenWrt"; exit 1 ;; esac' _ "$spool"
check "config: listens on 0.0.0.0:25 and [::]:25" \
	sh -c 'grep -Fx "main.listen=0.0.0.0:25" "$1" && grep -Fx "main.listen=[::]:25" "$1"' _ "$TMP/calls.cfg"
check "config: control_socket /var/run/mxspool.sock" test "$(cfgv main.control_socket)" = /var/run/mxspool.sock
check "config: syslog 1" test "$(cfgv main.syslog)" = 1
check "config: ships disabled (enabled '0')" test "$(cfgv main.enabled)" = 0
check "config: no tabs/spaces mix-up (options indented with a tab)" \
	sh -c '! grep -nE "^ +(option|list)" "$1"' _ "$CONFIG"

# --- package Makefile, test.sh ------------------------------------------------------
mk=$PKG/Makefile
check "Makefile: PKG_VERSION matches Cargo.toml" \
	test "$(sed -n 's/^PKG_VERSION:=//p' "$mk")" = "$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
mkvar() { sed -n "s/^$1:=//p" "$mk"; }
check "Makefile: PKG_VERSION is digits and dots (valid for opkg and apk)" \
	sh -c 'echo "$1" | grep -Ex "[0-9]+(\.[0-9]+)*"' _ "$(mkvar PKG_VERSION)"
check "Makefile: PKG_RELEASE is an integer" sh -c 'echo "$1" | grep -Ex "[1-9][0-9]*"' _ "$(mkvar PKG_RELEASE)"
check "Makefile: one licence: SPDX header = PKG_LICENSE = Cargo.toml license" \
	sh -c 'test "$1" = "$2" && test "$2" = "$3" || { echo "SPDX $1, PKG_LICENSE $2, Cargo.toml $3"; exit 1; }' _ \
	"$(sed -n 's/^# SPDX-License-Identifier: //p' "$mk")" "$(mkvar PKG_LICENSE)" \
	"$(sed -n 's/^license = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
check "Makefile: PKG_LICENSE_FILES exist and the LICENSE is the MIT licence" \
	sh -c 'test "$1" = LICENSE && head -n1 "$2/LICENSE" | grep -Fx "MIT License"' _ "$(mkvar PKG_LICENSE_FILES)" "$ROOT"
check "Makefile: PKG_SOURCE_URL in the codeload form" \
	sh -c 'echo "$1" | grep -Ex "https://codeload\.github\.com/[^/]+/[^/]+/tar\.gz/v\\\$\(PKG_VERSION\)\?"' _ "$(mkvar PKG_SOURCE_URL)"
# No release tarball is published yet: PKG_HASH may be skip only while the
# README says so under "Before submitting".
check "Makefile: PKG_HASH a sha256, or skip and said so in README.md" \
	sh -c 'echo "$1" | grep -Ex "[0-9a-f]{64}" || { test "$1" = skip && grep -F "\`PKG_HASH\` is \`skip\`, deliberately" "$2"; }' _ "$(mkvar PKG_HASH)" "$PKG/README.md"
check "Makefile: conffiles lists /etc/config/mxspool" \
	sh -c 'sed -n "/^define Package\/mxspool\/conffiles/,/^endef/p" "$1" | grep -Fx /etc/config/mxspool' _ "$mk"
check "Makefile: installs /usr/sbin/mxspool" grep -F '$(INSTALL_BIN) $(PKG_INSTALL_DIR)/bin/mxspool $(1)/usr/sbin/' "$mk"
check "Makefile: DEPENDS \$(RUST_ARCH_DEPENDS)" grep -E '^[[:space:]]*DEPENDS:=\$\(RUST_ARCH_DEPENDS\)' "$mk"
check "test.sh: no grep -q" sh -c '! grep -v "^[[:space:]]*#" "$1" | grep -n "grep -q"' _ "$PKG/test.sh"

# --- test.sh against a fake binary ------------------------------------------------------
mkdir -p "$TMP/bin"
printf '#!/bin/sh\necho "mxspool 0.1.0 (mips-unknown-linux-musl)"\n' >"$TMP/bin/mxspool"
chmod +x "$TMP/bin/mxspool"
check "test.sh: passes when --version prints PKG_VERSION" env PATH="$TMP/bin:$PATH" sh "$PKG/test.sh" mxspool 0.1.0
check "test.sh: fails when it does not" sh -c '! env PATH="$1:$PATH" sh "$2" mxspool 9.9.9' _ "$TMP/bin" "$PKG/test.sh"

# --- the uci-defaults script: the firewall rule for port 25, disabled --------------
# Run under $SH against uci-emu.py (a stand-in for OpenWrt's uci: changes are
# staged and reach /etc/config/firewall only on `uci commit firewall`).
DEFAULTS=$PKG/files/mxspool.defaults
mkdir -p "$TMP/ucibin"
ln -sf "$HERE/uci-emu.py" "$TMP/ucibin/uci"
# OpenWrt's default /etc/config/firewall (fw4), trimmed.
cat >"$TMP/firewall.default" <<'FW'
config defaults
	option input 'REJECT'
	option output 'ACCEPT'
	option forward 'REJECT'
	option synflood_protect '1'

config zone
	option name 'lan'
	list network 'lan'
	option input 'ACCEPT'
	option output 'ACCEPT'
	option forward 'ACCEPT'

config zone
	option name 'wan'
	list network 'wan'
	list network 'wan6'
	option input 'REJECT'
	option output 'ACCEPT'
	option forward 'REJECT'
	option masq '1'
	option mtu_fix '1'

config forwarding
	option src 'lan'
	option dest 'wan'

config rule
	option name 'Allow-DHCP-Renew'
	option src 'wan'
	option proto 'udp'
	option dest_port '68'
	option target 'ACCEPT'
	option family 'ipv4'
FW
defaults() { # CONFDIR: run the uci-defaults script with /etc/config there
	rm -rf "$TMP/ucisave"
	: >"$TMP/ucilog"
	# shellcheck disable=SC2086 # SH may be "busybox sh": split on purpose
	env PATH="$TMP/ucibin:$PATH" UCI_CONFDIR="$1" UCI_SAVEDIR="$TMP/ucisave" UCI_LOG="$TMP/ucilog" \
		$SH "$DEFAULTS" >"$TMP/defaults.out" 2>&1
}
uci_in() { # CONFDIR ARGS...: the stand-in on the committed files only
	confdir=$1; shift
	env UCI_CONFDIR="$confdir" UCI_SAVEDIR="$TMP/ucisave-read" "$HERE/uci-emu.py" "$@"
}
rule_is() { # CONFDIR OPTION VALUE
	v=$(uci_in "$1" get "firewall.mxspool_smtp.$2") || { echo "no firewall.mxspool_smtp.$2"; cat "$1/firewall"; return 1; }
	[ "$v" = "$3" ] || { echo "firewall.mxspool_smtp.$2='$v', want '$3'"; return 1; }
}
mkdir -p "$TMP/etc1"
cp "$TMP/firewall.default" "$TMP/etc1/firewall"
defaults "$TMP/etc1"
check "uci-defaults: exits 0 (so it is removed after running)" test "$?" = 0
check "uci-defaults: prints nothing" test ! -s "$TMP/defaults.out"
check "uci-defaults: adds the rule section firewall.mxspool_smtp" \
	test "$(uci_in "$TMP/etc1" get firewall.mxspool_smtp)" = rule
for kv in "name Allow-SMTP-mxspool" "src wan" "proto tcp" "dest_port 25" "target ACCEPT" "family any" "enabled 0"; do
	# shellcheck disable=SC2086 # two words: option and value
	check "uci-defaults: rule option ${kv% *} '${kv#* }'" rule_is "$TMP/etc1" $kv
done
check "uci-defaults: the rule has no other options (no dest: it is an input rule)" \
	test "$(uci_in "$TMP/etc1" show firewall.mxspool_smtp | wc -l)" = 8
check "uci-defaults: commits the firewall config (nothing left staged)" \
	sh -c 'grep -Fx "uci commit firewall" "$1" && test ! -e "$2/firewall.json"' _ "$TMP/ucilog" "$TMP/ucisave"
sections_are() { # CONFDIR N: the firewall config has N sections
	n=$(uci_in "$1" show firewall | grep -c '^firewall\.[^.]*=')
	[ "$n" = "$2" ] || { echo "$n sections, want $2"; cat "$1/firewall"; return 1; }
}
check "uci-defaults: keeps the 5 sections there were, adds one" sections_are "$TMP/etc1" 6
check "uci-defaults: the old rule is untouched" \
	test "$(uci_in "$TMP/etc1" get 'firewall.@rule[0].name')" = Allow-DHCP-Renew
cp "$TMP/etc1/firewall" "$TMP/firewall.after1"
defaults "$TMP/etc1"
check "uci-defaults (run again, as on an upgrade): exits 0" test "$?" = 0
check "uci-defaults (run again): the firewall file is unchanged" cmp "$TMP/firewall.after1" "$TMP/etc1/firewall"
check "uci-defaults (run again): changes nothing, commits nothing" \
	sh -c '! grep -E "^uci (set|add|delete|commit)" "$1"' _ "$TMP/ucilog"
# The owner enabled the rule; an upgrade runs the script again.
sed "s/option enabled '0'/option enabled '1'/" "$TMP/firewall.after1" >"$TMP/etc1/firewall"
defaults "$TMP/etc1"
check "uci-defaults (rule enabled by the owner, upgrade): stays enabled" rule_is "$TMP/etc1" enabled 1
# A rule of that name the owner made by hand (anonymous section).
mkdir -p "$TMP/etc2"
{ cat "$TMP/firewall.default"; printf "\nconfig rule\n\toption name 'Allow-SMTP-mxspool'\n\toption src 'wan'\n\toption dest_port '25'\n\toption proto 'tcp'\n\toption target 'ACCEPT'\n"; } >"$TMP/etc2/firewall"
cp "$TMP/etc2/firewall" "$TMP/firewall.byhand"
defaults "$TMP/etc2"
check "uci-defaults (a rule named Allow-SMTP-mxspool exists): adds none" cmp "$TMP/firewall.byhand" "$TMP/etc2/firewall"
# No firewall installed.
mkdir -p "$TMP/etc3"
defaults "$TMP/etc3"
check "uci-defaults (no /etc/config/firewall): exits 0" test "$?" = 0
check "uci-defaults (no /etc/config/firewall): creates none" test ! -e "$TMP/etc3/firewall"
check "Makefile: installs the uci-defaults script" \
	grep -F '$(INSTALL_BIN) ./files/mxspool.defaults $(1)/etc/uci-defaults/99-mxspool' "$mk"

# --- syntax and shellcheck --------------------------------------------------------
for f in "$INIT" "$DEFAULTS" "$PKG/test.sh" "$0" "$HERE/test-luci.sh" "$PKG/luci-app-mxspool/tests/screenshots.sh" "$ROOT"/cross/*.sh; do
	[ -f "$f" ] || continue
	rel=${f#"$ROOT"/}
	case "$(head -n1 "$f")" in
		*bash*) check "bash -n $rel" bash -n "$f"; dialect=bash ;;
		*) check "sh -n $rel" sh -n "$f"; dialect=dash ;;  # busybox ash ~ dash
	esac
	if [ "${NO_SHELLCHECK:-0}" != 1 ]; then
		if command -v shellcheck >/dev/null 2>&1; then
			check "shellcheck $rel" shellcheck -s "$dialect" "$f"
		else
			ko "shellcheck $rel" "shellcheck not installed (cross/setup.sh installs it; NO_SHELLCHECK=1 skips)"
		fi
	fi
done

printf '%d passed, %d failed\n' "$pass" "$fail"
[ "$fail" = 0 ]
