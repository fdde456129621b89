# Sourced by the bench scripts: tools and a release build.
# - postfix (smtp-source, smtp-sink, the private Postfix) and valgrind from apt
#   when missing; no system MTA is left running;
# - OpenSMTPD: Debian's package conflicts with postfix, so it is downloaded
#   with `apt-get download` and unpacked under $OPENSMTPD_ROOT, never installed;
#   its two system users are created as its postinst would.
export DEBIAN_FRONTEND=noninteractive
OPENSMTPD_ROOT=${OPENSMTPD_ROOT:-/var/tmp/mxspool-bench/opensmtpd}
export OPENSMTPD_ROOT

need_apt=""
command -v smtp-source >/dev/null 2>&1 || need_apt="$need_apt postfix"
command -v valgrind >/dev/null 2>&1 || need_apt="$need_apt valgrind"
if [ -n "$need_apt" ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq && apt-get install -y -qq $need_apt
fi
# Never leave a system MTA on port 25.
if command -v postfix >/dev/null 2>&1 && postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
fi

if [ "${MXSPOOL_BENCH_OPENSMTPD:-1}" = 1 ]; then
if [ ! -x "$OPENSMTPD_ROOT/usr/sbin/smtpd" ]; then
    mkdir -p "$OPENSMTPD_ROOT.deb"
    (cd "$OPENSMTPD_ROOT.deb" && apt-get download opensmtpd >/dev/null 2>&1 || {
        apt-get update -qq && apt-get download opensmtpd; })
    dpkg -x "$OPENSMTPD_ROOT".deb/opensmtpd_*.deb "$OPENSMTPD_ROOT"
fi
for name in opensmtpd opensmtpq; do
    getent group "$name" >/dev/null || addgroup --system "$name" >/dev/null
    id "$name" >/dev/null 2>&1 || adduser --system --home /var/lib/opensmtpd/empty \
        --no-create-home --disabled-password --ingroup "$name" "$name" >/dev/null
done
mkdir -p /var/lib/opensmtpd/empty
chgrp opensmtpq "$OPENSMTPD_ROOT/usr/sbin/smtpctl" && chmod 2755 "$OPENSMTPD_ROOT/usr/sbin/smtpctl"
fi

# The binary measured: a static musl build when that target is installed
# (what OpenWrt runs: no shared libc mapped in), else the glibc build.
# MXSPOOL_BENCH_BINARY overrides.
MUSL=x86_64-unknown-linux-musl
if [ -z "${MXSPOOL_BENCH_BINARY:-}" ]; then
    if rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
        MXSPOOL_BENCH_BINARY=target/$MUSL/release/mxspool
        if [ "${MXSPOOL_BENCH_SKIP_BUILD:-0}" != 1 ]; then
            # ring's C parts: the host gcc will do when there is no musl-gcc.
            command -v x86_64-linux-musl-gcc >/dev/null 2>&1 || export CC_x86_64_unknown_linux_musl=gcc
            cargo build --release --quiet --target "$MUSL"
        fi
    else
        MXSPOOL_BENCH_BINARY=target/release/mxspool
        [ "${MXSPOOL_BENCH_SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet
    fi
fi
export MXSPOOL_BENCH_BINARY
