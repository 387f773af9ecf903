#!/bin/sh
# A stand-in for the Dockerfile's base (python:3.11-slim-bookworm) on a machine that cannot pull images:
# Debian bookworm (python3 is 3.11) made with debootstrap from the apt mirror, with python3-venv, the
# libraries the image needs, and this host's CA bundle (pip inside `docker build` needs the bundle this
# host trusts). Then:  docker build --build-arg BASE=fr-base:bookworm -t api-facial-recognition .
#   sh deploy/docker/base-image.sh [ROOTFS_DIR] [TAG]     (as root; needs debootstrap and a docker engine)
set -eu
ROOT=${1:-/var/tmp/fr-base-rootfs}
TAG=${2:-fr-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,make,libgl1,libglib2.0-0,libgomp1,procps \
        bookworm "$ROOT" "$MIRROR"
fi
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
rm -rf "$ROOT/var/lib/apt/lists/"* "$ROOT/var/cache/apt/archives/"*.deb
tar -C "$ROOT" -c . | docker import \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$TAG"
echo "base image $TAG"
