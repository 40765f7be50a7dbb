#!/bin/sh
# The source tests (test/sources) start real servers. This checks that their tools are installed
# and, with --install (as root), installs the Debian packages that provide them.
#   nbdkit      -> nbdkit       (nbdkit with the file/memory plugins, error/delay/blocksize-policy filters)
#   qemu-nbd    -> qemu-utils
#   nginx       -> nginx
#   nbdcopy, nbdinfo -> libnbd-bin
#   openssl     -> openssl      (self-signed certificate for the HTTPS test)
set -eu
PACKAGES="nbdkit qemu-utils nginx libnbd-bin openssl"
missing=""
for tool in nbdkit qemu-nbd nginx nbdcopy nbdinfo openssl; do
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1; then missing="$missing $tool"; fi
done
if [ -z "$missing" ]; then
  echo "source test tools present"
  exit 0
fi
if [ "${1:-}" = "--install" ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
  exit 0
fi
echo "missing:$missing; install with: apt-get install -y $PACKAGES" >&2
exit 1
