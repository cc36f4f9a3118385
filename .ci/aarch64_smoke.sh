#!/usr/bin/env bash
# Run the aarch64 manylinux wheel here, under qemu-user: Debian's arm64 CPython 3.11 (its
# packages unpacked into a private root, nothing installed for arm64 system-wide), the wheel
# and the pure-Python test tools installed into an arm64 virtualenv, then CPython's own
# test_socketserver (that interpreter's, from Debian's libpython3.11-testsuite) and a smoke
# subset of ours.
#
#   .ci/aarch64_smoke.sh WHEEL WORKDIR        (Debian/Ubuntu with apt; root or sudo)
#
# Slow (everything is emulated) and only a subset: the whole suite runs natively on x86_64.
# Not in the subset: tests/test_exit_with_daemon_threads.py, which fails intermittently under
# qemu-user (a segfault or a hang at exit in about one run in five) while passing natively;
# whether that is qemu's or the aarch64 build's is not known yet.
set -euo pipefail
wheel=$(realpath "$1")
work=$(realpath "$2")
root=$work/root
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
command -v qemu-aarch64-static >/dev/null || $sudo apt-get install -y -qq qemu-user-static >/dev/null
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
    $sudo apt-get update -qq
fi

# CPython 3.11 for arm64 and what it links against, unpacked (not installed) into $root.
packages=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6
    libgcc-s1 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0
    libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3 libcrypt1 libdb5.3
    libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2)
mkdir -p "$work/debs" "$root/usr/bin"
(cd "$work/debs" && apt-get download -q "${packages[@]/%/:arm64}" libpython3.11-testsuite 2>&1 |
    grep -v "unsandboxed" || true)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done

# A launcher that runs the arm64 interpreter under qemu and keeps its own path as argv[0], so
# sys.executable (and a virtualenv's python) relaunch through qemu too.
cat >"$root/usr/bin/python3.11-qemu" <<EOF
#!/bin/sh
exec qemu-aarch64-static -L "$root" -0 "\$0" "$root/usr/bin/python3.11" "\$@"
EOF
chmod +x "$root/usr/bin/python3.11-qemu"
"$root/usr/bin/python3.11-qemu" -m venv --without-pip "$work/venv"
"$work/venv/bin/python" -c 'import platform, sys; print("interpreter:", platform.python_version(), platform.machine(), sys.executable)'

# The wheel and the test tools, resolved for arm64 by the host's pip (no pip under qemu).
python3 -m pip install --quiet --target "$work/venv/lib/python3.11/site-packages" \
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp \
    --only-binary=:all: "$wheel[test]"

mkdir "$work/src"
cp -R "$here/tests" "$here/examples" "$here/pyproject.toml" "$work/src/"
cd "$work/src"
"$work/venv/bin/python" -c 'import socketserver_rs._core as c, sysconfig; print("extension:", c.__file__)'
mapfile -t tests < <(grep -v '^#' "$here/.ci/emulated_tests")
SOCKETSERVER_RS_EXPECT_WHEEL=1 "$work/venv/bin/python" -m pytest -p no:cacheprovider "${tests[@]}"
