#!/bin/bash
# Let this machine run foreign-architecture binaries (containers included)
# through Debian's qemu-user-static, for the arm64 image test.
# Usage: tests/testbed/binfmt.sh [ARCH]   (Debian name, default arm64)
#
# The kernel hands an ELF of another machine to qemu only when a binfmt_misc
# entry for it is enabled; the F ("fix binary") flag makes the kernel open the
# interpreter at registration, so it also works inside a container's mount
# namespace, where /usr/libexec/qemu-binfmt does not exist.
set -euo pipefail
ARCH=${1:-arm64}
case "$ARCH" in
    arm64) entry=qemu-aarch64 ;;
    armhf) entry=qemu-arm ;;
    *) entry=qemu-$ARCH ;;
esac
DIR=/proc/sys/fs/binfmt_misc

fail() { echo "binfmt: $*" >&2; exit 1; }

if [ ! -e "$DIR/status" ]; then
    [ -d "$DIR" ] || fail "$DIR missing: this kernel has no binfmt_misc (CONFIG_BINFMT_MISC)"
    err=$(mount -t binfmt_misc binfmt_misc "$DIR" 2>&1) ||
        fail "cannot mount binfmt_misc on $DIR: $err"
fi
[ "$(cat "$DIR/status")" = enabled ] || echo 1 >"$DIR/status"
if [ ! -e "$DIR/$entry" ]; then
    command -v update-binfmts >/dev/null || fail "update-binfmts missing (apt-get install binfmt-support)"
    [ -e "/usr/share/binfmts/$entry" ] || fail "no $entry format (apt-get install qemu-user-static)"
    update-binfmts --import "$entry" >&2 || true
    update-binfmts --enable "$entry" >&2 || fail "update-binfmts --enable $entry failed"
fi
[ -e "$DIR/$entry" ] || fail "$entry is still not registered in $DIR"
[ "$(head -1 "$DIR/$entry")" = enabled ] || echo 1 >"$DIR/$entry"
flags=$(sed -n 's/^flags: *//p' "$DIR/$entry")
case "$flags" in
    *F*) ;;
    *) fail "$entry is registered without the F flag ($flags): containers could not find $(sed -n 's/^interpreter //p' "$DIR/$entry")" ;;
esac
echo "binfmt: $entry enabled, flags $flags" >&2
