#!/bin/sh
# openwrt/packages CI: called as test.sh PKG_NAME PKG_VERSION on the target (qemu).
# Do not use grep -q here (CONTRIBUTING.md "Generic tests").

case "$1" in
mxspool)
	mxspool --version 2>&1 | grep "$2"
	;;
esac
