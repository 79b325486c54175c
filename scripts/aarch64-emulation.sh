#!/usr/bin/env bash
# An aarch64 machine emulated here, for trying bundles and RPC tuning without a board:
#
#   scripts/aarch64-emulation.sh [DIR]      (default DIR: .aarch64; run as root for apt-get)
#
# installs Debian's aarch64 C++ cross compiler and qemu-user, then builds in DIR
#   sysroot/   an aarch64 CPython 3.11 and its libraries, unpacked from Debian's arm64
#              packages (nothing arm64 is installed into this system)
#   site/      the aarch64 wheels of the TVM runtime and tvmsep's dependencies
#   python     runs that Python under qemu-aarch64, with site/ and this checkout on its path
#              (and is its sys.executable, for the workers it starts); QEMU_CPU picks the
#              emulated core (cortex-a72: a Raspberry Pi 4; neoverse-n1)
# and touches DIR/.installed when all of it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${1:-.aarch64}")
TVM_PINS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1"  # pyproject.toml's pair
PYTHON=${PYTHON:-python3}

missing=()
for tool in aarch64-linux-gnu-g++ qemu-aarch64-static dpkg-deb; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "missing ${missing[*]}: run as root, or apt-get install g++-aarch64-linux-gnu qemu-user-static" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static >/dev/null
fi

rm -rf "$DIR.partial"
mkdir -p "$DIR.partial/debs" "$DIR.partial/sysroot" "$DIR.partial/wheels" "$DIR.partial/site"

# The arm64 packages are only downloaded and unpacked; the architecture is added to apt just
# for that, and removed again whatever happens.
if [[ $(id -u) != 0 ]]; then
    echo "building the aarch64 sysroot needs root (dpkg --add-architecture arm64, for apt-get download)" >&2
    exit 1
fi
dpkg --add-architecture arm64
trap 'dpkg --remove-architecture arm64 && apt-get update -qq' EXIT
apt-get update -qq
packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
               --no-replaces --no-enhances python3.11-minimal:arm64 libpython3.11-stdlib:arm64 libstdc++6:arm64 \
           | grep -E '^[a-z0-9].*:arm64$' | grep -vE '^(dpkg|install-info|tar):' | sort -u)
(cd "$DIR.partial/debs" && apt-get download -qq $packages)
for deb in "$DIR.partial/debs"/*.deb; do
    dpkg-deb -x "$deb" "$DIR.partial/sysroot"
done
dpkg --remove-architecture arm64
apt-get update -qq
trap - EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 -d "$DIR.partial/wheels" \
    $TVM_PINS numpy ml_dtypes typing_extensions psutil cloudpickle
for wheel in "$DIR.partial/wheels"/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$DIR.partial/site"
done
rm -rf "$DIR.partial/debs" "$DIR.partial/wheels"

cat >"$DIR.partial/python" <<EOF
#!/bin/sh
# aarch64 CPython under qemu-user (scripts/aarch64-emulation.sh)
export PYTHONPATH="$DIR/site:$PWD\${PYTHONPATH:+:\$PYTHONPATH}"
exec qemu-aarch64-static -L "$DIR/sysroot" "$DIR/sysroot/usr/bin/python3.11" "\$@"
EOF
chmod +x "$DIR.partial/python"
# Workers that this Python starts (an RPC server's, meta-schedule's) run sys.executable, which
# is the bare aarch64 binary: without binfmt_misc only the wrapper above can run it.
cat >"$DIR.partial/site/sitecustomize.py" <<SITE
import sys
sys.executable = "$DIR/python"
SITE
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"
touch "$DIR/.installed"
"$DIR/python" -c 'import platform, sys; print("aarch64 emulation ready:", platform.machine(), sys.version.split()[0])'
