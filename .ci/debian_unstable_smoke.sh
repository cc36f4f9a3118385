#!/usr/bin/env bash
# Run the x86_64 manylinux wheel on the CPythons newer than pyenv offers here, as Debian
# unstable packages them (3.14 and 3.15 in December 2026, on glibc 2.43): the wheel claims every
# CPython from 3.11 on, and a new CPython is where a drop-in module meets changes first.
#
#   .ci/debian_unstable_smoke.sh WHEEL WORKDIR [PYTEST_ARGS...]    (Debian/Ubuntu; root)
#
# A minimal Debian unstable is debootstrapped into WORKDIR/root (about a minute; kept, and
# upgraded, on the next run) and every pythonX.Y package it offers from CPYTHON_MIN (3.14) on
# is installed. For each: a fresh virtualenv gets the wheel and the test tools from PyPI, and
# the whole suite runs in the chroot, CPython's own test_socketserver of that version included.
# The chroot runs in a mount namespace of its own (unshare), so its /proc and /dev mounts end
# with it and nothing is left mounted on the host.
#
# Why a chroot: deb.debian.org serves unstable's binary packages here but not the newer
# CPythons' sources, and their binaries need unstable's glibc; a chroot also makes this the
# system users of Debian unstable and its derivatives have, not a build of ours.
set -euo pipefail
wheel=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
shift 2
pytest_args="$*" # plain words: they are put into the chroot's shell command line
root=$work/root
minimum=${CPYTHON_MIN:-3.14}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }
[ "$(id -u)" -eq 0 ] || { echo "debootstrap, chroot and unshare need root" >&2; exit 2; }

# Run a shell command line in the chroot, with /proc and /dev mounted in a private namespace.
in_chroot() {
    unshare --mount --propagation private -- sh -c '
        mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift &&
        exec chroot "$0" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive CI="${CI:-}" sh -c "$1"' "$root" "$root" "$1"
}

export DEBIAN_FRONTEND=noninteractive
if [ ! -e "$root/.built" ]; then
    step "Debian unstable (minbase) into $root"
    command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    rm -rf "$root"
    debootstrap --variant=minbase unstable "$root" https://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    touch "$root/.built"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The chroot trusts what the host trusts, before apt first fetches over TLS: the host's bundle
# now, and the certificate authorities the host added itself (a TLS-inspecting proxy's, say)
# where the ca-certificates package, once installed, builds its bundle from.
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# The archive this machine reaches can be a snapshot whose Release file is past its Valid-Until
# date (debootstrap does not look; apt refuses to update from it).
echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99snapshot"

# The pythonX.Y packages from $minimum on (not the free-threaded or debug variants), newest last.
step "the CPythons Debian unstable packages from $minimum on, with the tools the tests drive (nc, curl, openssl, strace, systemd-socket-activate)"
in_chroot "apt-get update -qq && apt-get upgrade -y -qq >/dev/null"
mapfile -t versions < <(in_chroot "apt-cache pkgnames python3." | sed -n 's/^python\(3\.[0-9]*\)$/\1/p' |
    sort -V | awk -v min="$minimum" '{split($0, v, "."); split(min, m, "."); if (v[2] + 0 >= m[2] + 0) print}')
[ "${#versions[@]}" -gt 0 ] || { echo "Debian unstable offers no CPython from $minimum on" >&2; exit 1; }
packages=(ca-certificates netcat-openbsd curl openssl strace systemd)
for version in "${versions[@]}"; do
    packages+=("python$version" "python$version-venv" "libpython$version-testsuite")
done
in_chroot "apt-get install -y -qq --no-install-recommends ${packages[*]} >/dev/null"
in_chroot 'ldd --version | head -n 1'

status=0
for version in "${versions[@]}"; do
    step "the release wheel in a fresh virtualenv of Debian unstable's CPython $version: the whole suite"
    rm -rf "$root/ci"
    mkdir -p "$root/ci/src"
    cp "$wheel" "$root/ci/"
    cp -R "$here/tests" "$here/examples" "$here/pyproject.toml" "$root/ci/src/"
    rm -rf "$root/ci/src/tests/__pycache__"
    # The package must come from the virtualenv's site-packages, on Debian's interpreter.
    cat >"$root/ci/where.py" <<'PY'
import importlib.metadata, platform, sys, socketserver_rs
assert socketserver_rs.__file__.startswith("/ci/venv/"), socketserver_rs.__file__
assert sys.base_prefix == "/usr", sys.base_prefix
print("interpreter:", platform.python_version(), sys.base_prefix, *platform.libc_ver())
print("socketserver_rs", importlib.metadata.version("socketserver-rs"), "from", socketserver_rs.__file__)
PY
    in_chroot "python$version -m venv /ci/venv &&
        /ci/venv/bin/python -m pip install --quiet --disable-pip-version-check \
            --only-binary socketserver-rs '/ci/$(basename "$wheel")[test]' &&
        cd /ci/src && /ci/venv/bin/python /ci/where.py &&
        SOCKETSERVER_RS_EXPECT_WHEEL=1 /ci/venv/bin/python -m pytest -p no:cacheprovider $pytest_args" ||
        status=1
done
rm -rf "$root/ci"
exit "$status"
