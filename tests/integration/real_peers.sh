#!/usr/bin/env bash
# Makes the real mail servers of test_primaries.py runnable, none of them as
# a system service:
#   exim       Debian's exim4-daemon-light (+ exim4-base), unpacked with
#              `apt-get download` + `dpkg -x` under $MXSPOOL_EXIM_ROOT
#              (default /var/tmp/mxspool-peers/exim): as a package it
#              conflicts with postfix. Its compiled-in user Debian-exim is
#              created as the package's postinst would.
#   opensmtpd  Debian's opensmtpd, unpacked the same way under
#              $OPENSMTPD_ROOT (default /var/tmp/mxspool-bench/opensmtpd, the
#              root bench/setup.sh makes and reuses); its users opensmtpd and
#              opensmtpq are created as bench/setup.sh does.
#   postgrey   the greylisting policy daemon, installed with apt (it does not
#              conflict with postfix); no service is started.
# The shared libraries the unpacked binaries link against are installed with
# apt (lib* packages of their Depends: no conflicts there).
#
# Usage: real_peers.sh [exim] [opensmtpd] [postgrey]   (default: all three)
# Idempotent and quick when everything is there; concurrent runs wait for
# each other (flock). Needs root. Exit status non-zero if a server could not
# be made runnable; the tests then skip with the reason printed here.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive

EXIM_ROOT=${MXSPOOL_EXIM_ROOT:-/var/tmp/mxspool-peers/exim}
OPENSMTPD_ROOT=${OPENSMTPD_ROOT:-/var/tmp/mxspool-bench/opensmtpd}
LOCK=${MXSPOOL_PEERS_LOCK:-/var/tmp/mxspool-peers/.lock}

die() {
	echo "real_peers.sh: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, system users, dpkg -x of set-uid binaries)"

mkdir -p "$(dirname "$LOCK")" || die "cannot create $(dirname "$LOCK")"
exec 9>"$LOCK" || die "cannot open the lock file $LOCK"
flock -w 600 9 || die "timed out waiting for another real_peers.sh"

apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return 0
	apt-get update -qq && apt_updated=1
}

# apt-get install PKG... when any of them is missing, starting no service.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "real_peers.sh: apt-get install ${missing[*]}"
	local policy=/usr/sbin/policy-rc.d created=0 rc
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		{ apt_update && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
	rc=$?
	[ "$created" = 1 ] && rm -f "$policy"
	return "$rc"
}

# The lib* packages among the Depends of the .deb files given (first
# alternative, no version).
lib_depends() {
	local deb
	for deb in "$@"; do
		dpkg-deb -f "$deb" Depends
	done | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:.*//' -e 's/[[:space:]]//g' |
		grep '^lib' | sort -u
}

# unpack ROOT BINARY PKG...: download PKG... and unpack them into ROOT unless
# ROOT/BINARY is there already. The unpacking happens in a temporary
# directory renamed into place, so a half-unpacked root is never used.
unpack() {
	local root=$1 binary=$2 tmp debs lib
	shift 2
	local libs=()
	if [ -x "$root/$binary" ]; then
		return 0
	fi
	mkdir -p "$(dirname "$root")" || return 1
	debs=$(mktemp -d "$root.deb.XXXXXX") || return 1
	if ! (cd "$debs" && apt-get download "$@" >/dev/null 2>&1); then
		# No lists yet (fresh machine) or stale ones: update once and retry.
		if ! apt_update || ! (cd "$debs" && apt-get download "$@"); then
			rm -rf "$debs"
			echo "real_peers.sh: apt-get download $* failed" >&2
			return 1
		fi
	fi
	while read -r lib; do
		[ -n "$lib" ] && libs+=("$lib")
	done < <(lib_depends "$debs"/*.deb)
	if [ ${#libs[@]} -gt 0 ]; then
		apt_install "${libs[@]}" || { rm -rf "$debs"; return 1; }
	fi
	tmp=$(mktemp -d "$root.new.XXXXXX") || return 1
	for deb in "$debs"/*.deb; do
		dpkg -x "$deb" "$tmp" || { rm -rf "$debs" "$tmp"; return 1; }
	done
	rm -rf "$debs"
	# A root without its binary is a leftover of an interrupted run.
	rm -rf "$root"
	mv -T "$tmp" "$root" || return 1
	chmod 755 "$root"
}

# The binary must start: every shared library it needs is there.
check_libs() {
	local bin=$1 missing
	missing=$(ldd "$bin" 2>&1 | grep 'not found')
	[ -z "$missing" ] && return 0
	echo "real_peers.sh: $bin lacks shared libraries:" >&2
	echo "$missing" >&2
	return 1
}

system_user() { # NAME HOME
	getent group "$1" >/dev/null || groupadd --system "$1" || return 1
	id "$1" >/dev/null 2>&1 ||
		useradd --system --gid "$1" --home-dir "$2" --no-create-home \
			--shell /usr/sbin/nologin "$1"
}

setup_exim() {
	unpack "$EXIM_ROOT" usr/sbin/exim4 exim4-daemon-light exim4-base || return 1
	# The binary looks its compiled-in user up before it reads any
	# configuration; the tests' configuration runs it as that user.
	system_user Debian-exim /var/spool/exim4 || return 1
	# Libraries may have been removed since the root was unpacked.
	if ! check_libs "$EXIM_ROOT/usr/sbin/exim4"; then
		mapfile -t libs < <(apt-cache depends exim4-daemon-light | sed -n 's/^ *Depends: \(lib[^ ]*\)$/\1/p')
		apt_install "${libs[@]}" && check_libs "$EXIM_ROOT/usr/sbin/exim4" || return 1
	fi
	# (--version exits 1 without the compiled-in configuration file.)
	local version
	version=$("$EXIM_ROOT/usr/sbin/exim4" --version 2>&1)
	case $version in
	*"Exim version "*) ;;
	*)
		echo "real_peers.sh: $EXIM_ROOT/usr/sbin/exim4 does not run: $version" >&2
		return 1
		;;
	esac
}

setup_opensmtpd() {
	unpack "$OPENSMTPD_ROOT" usr/sbin/smtpd opensmtpd || return 1
	system_user opensmtpd /var/lib/opensmtpd/empty || return 1
	system_user opensmtpq /var/lib/opensmtpd/empty || return 1
	# smtpd's privilege-separated processes chroot here.
	mkdir -p /var/lib/opensmtpd/empty || return 1
	# Its helpers (mail.maildir, mail.mda...) have a compiled-in path under
	# /usr/libexec/opensmtpd: the harness binds the root's usr/libexec over
	# /usr/libexec in smtpd's private mount namespace, which needs the
	# mount point.
	mkdir -p /usr/libexec || return 1
	if ! check_libs "$OPENSMTPD_ROOT/usr/sbin/smtpd"; then
		mapfile -t libs < <(apt-cache depends opensmtpd | sed -n 's/^ *Depends: \(lib[^ ]*\)$/\1/p')
		apt_install "${libs[@]}" && check_libs "$OPENSMTPD_ROOT/usr/sbin/smtpd" || return 1
	fi
}

setup_postgrey() {
	apt_install postgrey || return 1
	command -v postgrey >/dev/null 2>&1 || [ -x /usr/sbin/postgrey ]
}

[ $# -gt 0 ] || set -- exim opensmtpd postgrey
rc=0
for server in "$@"; do
	case $server in
	exim) setup_exim ;;
	opensmtpd) setup_opensmtpd ;;
	postgrey) setup_postgrey ;;
	*) die "unknown server $server (exim, opensmtpd, postgrey)" ;;
	esac || {
		echo "real_peers.sh: $server could not be made runnable" >&2
		rc=1
	}
done
exit "$rc"
