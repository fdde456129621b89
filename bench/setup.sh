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

if [ "${MXSPOOL_BENCH_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --quiet
fi
