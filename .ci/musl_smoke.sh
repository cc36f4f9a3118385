#!/usr/bin/env bash
# Run the x86_64 musllinux wheel on a musl libc here, on Debian, without a container: musl 1.2.5
# (Debian's source package), CPython 3.11 (Debian's source) built with that musl's gcc wrapper
# against zlib and OpenSSL built the same way, so that the interpreter, every stdlib extension
# module and the wheel's `_core` run on musl's dynamic linker. That interpreter's own pip picks
# and installs the wheel and the test tools (cryptography and cffi as their musllinux wheels)
# into a virtualenv, which runs our whole pytest suite, CPython's test_socketserver included.
#
#   .ci/musl_smoke.sh WHEEL WORKDIR [PYTEST_ARGS...]    (Debian/Ubuntu with apt; root or sudo)
#
# WORKDIR caches the sources and the built musl, libraries and interpreter (delete it to start
# from scratch, about 6 minutes on two cores); the virtualenv and the copy of the tests are
# made afresh each run. Downloads come only from deb.debian.org (upstream tarballs named by a
# source package's .dsc and checked against the SHA-256 it gives) and PyPI.
#
# Why build CPython: Debian packages no musl CPython, and Alpine's (or python-build-standalone's)
# would need Docker Hub or GitHub. Why build musl rather than use bookworm's musl-tools (1.2.3):
# the musllinux wheels of cryptography (which the TLS tests use) bundle a libgcc_s with DT_RELR
# relocations, which musl reads only from 1.2.4 on; under 1.2.3 importing cryptography jumps to
# an unrelocated address and segfaults. Our own wheel has no DT_RELR. The musl built is the one
# Debian trixie lists (1.2.5 in 2026); MUSL_VERSION picks another version of that source package.
set -euo pipefail
shopt -s inherit_errexit # a failed download inside $(...) stops the script there
wheel=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
jobs=${MUSL_SMOKE_JOBS:-2}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
musl=$work/musl       # musl libc, its dynamic linker and its gcc wrapper
prefix=$work/deps     # zlib and OpenSSL, static, for musl
python=$work/python   # the musl CPython
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

case "$(basename "$wheel")" in
    *-musllinux_1_2_x86_64.whl) ;;
    *) echo "not an x86_64 musllinux_1_2 wheel: $wheel" >&2; exit 2 ;;
esac

step "Debian packages: gcc, kernel headers, perl for OpenSSL's Configure"
export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in gcc linux-libc-dev perl make curl xz-utils binutils ca-certificates; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The version of source package $1 that Debian suite $2's main archive lists (its Sources
# index, fetched once per suite into $work/src): a version whose .dsc the main pool holds. Not
# the version apt would install: that may come from the security archive, which serves no
# .dsc files here (a clean CI machine's `apt-get update` made zlib's a 404).
suite_version() {
    local source=$1 suite=$2 index=$work/src/Sources-$2
    mkdir -p "$work/src"
    if [ ! -s "$index" ]; then
        curl -sSf "https://deb.debian.org/debian/dists/$suite/main/source/Sources.xz" | xz -d >"$index.part"
        mv "$index.part" "$index"
    fi
    awk -v p="$source" '/^Package: / {hit = ($2 == p)} hit && /^Version: / {print $2; exit}' "$index"
}

# Download the upstream tarball of version $2 of Debian source package $1 into $work/src,
# checked against the SHA-256 its .dsc gives; print its path.
fetch_orig() {
    local source=$1 version=$2 pool dsc line sum name
    [ -n "$version" ] || { echo "no version of $source in Debian's Sources index" >&2; return 1; }
    version=${version#*:}
    pool=https://deb.debian.org/debian/pool/main/${source:0:1}/$source
    mkdir -p "$work/src"
    dsc=$work/src/${source}_$version.dsc
    [ -s "$dsc" ] || curl -sSf -o "$dsc" "$pool/${source}_$version.dsc"
    line=$(sed -n '/^Checksums-Sha256:/,/^[A-Z]/p' "$dsc" | grep -E ' [^ ]+\.orig\.tar\.[a-z0-9]+$')
    sum=$(echo "$line" | awk '{print $1}')
    name=$(echo "$line" | awk '{print $3}')
    if ! echo "$sum  $work/src/$name" | sha256sum -c --status 2>/dev/null; then
        curl -sSf -o "$work/src/$name" "$pool/$name"
        echo "$sum  $work/src/$name" | sha256sum -c --quiet
    fi
    echo "$work/src/$name"
}

# Unpack tarball $1 into a fresh $work/build/$2 and print that directory.
unpack() {
    rm -rf "$work/build/$2"
    mkdir -p "$work/build/$2"
    tar -xf "$1" -C "$work/build/$2" --strip-components=1
    echo "$work/build/$2"
}

if [ ! -e "$musl/.built" ]; then
    version=${MUSL_VERSION:-$(suite_version musl trixie)}
    step "musl $version (Debian trixie's source), its dynamic linker in $musl/lib"
    dir=$(unpack "$(fetch_orig musl "$version")" musl)
    (cd "$dir" && ./configure --prefix="$musl" --syslibdir="$musl/lib" >/dev/null &&
        make -s -j"$jobs" >/dev/null && make -s install >/dev/null)
    touch "$musl/.built"
fi

# musl-gcc replaces glibc's headers with musl's, which leaves out the kernel's (<linux/...>,
# <asm/...>): these are libc-independent, so Debian's are linked in beside musl's. CPython's
# configure and setup.py also ask for the Debian multiarch triplet (the compiler's
# `-print-multiarch`, then `dpkg-architecture`) and would add glibc's /usr/include/<triplet>
# and /usr/lib/<triplet> to every module's build: the wrappers in $work/bin answer nothing, as
# on a system without multiarch.
mkdir -p "$work/bin" "$work/kernel-headers"
for dir in linux asm-generic mtd; do ln -sfn "/usr/include/$dir" "$work/kernel-headers/$dir"; done
ln -sfn /usr/include/x86_64-linux-gnu/asm "$work/kernel-headers/asm"
cat >"$work/bin/musl-cc" <<EOF
#!/bin/sh
for arg; do case "\$arg" in -print-multiarch | --print-multiarch) exit 0 ;; esac; done
exec "$musl/bin/musl-gcc" -idirafter "$work/kernel-headers" "\$@"
EOF
printf '#!/bin/sh\nexit 1\n' >"$work/bin/dpkg-architecture"
chmod +x "$work/bin/musl-cc" "$work/bin/dpkg-architecture"
export CC=$work/bin/musl-cc PATH=$work/bin:$PATH

if [ ! -e "$prefix/.zlib" ]; then
    step "zlib (Debian's source) for musl: pip's wheels are zip files"
    dir=$(unpack "$(fetch_orig zlib "$(suite_version zlib bookworm)")" zlib)
    (cd "$dir" && CFLAGS="-O2 -fPIC" ./configure --static --prefix="$prefix" >/dev/null && make -s -j"$jobs" install >/dev/null)
    touch "$prefix/.zlib"
fi

if [ ! -e "$prefix/.openssl" ]; then
    step "OpenSSL (Debian's source) for musl: pip fetches over TLS, and the TLS tests' clients use ssl"
    dir=$(unpack "$(fetch_orig openssl "$(suite_version openssl bookworm)")" openssl)
    (cd "$dir" && ./Configure linux-x86_64 no-shared no-tests no-engine no-afalgeng \
        no-module --prefix="$prefix" --libdir=lib --openssldir=/etc/ssl >/dev/null &&
        make -s -j"$jobs" build_libs >/dev/null 2>&1 && make -s install_dev >/dev/null)
    touch "$prefix/.openssl"
fi

if [ ! -e "$python/.built" ]; then
    step "CPython 3.11 (Debian's source) for musl"
    # The modules that need libraries not built here for musl (libffi, liblzma, libuuid, NIS,
    # ...) are switched off: nothing the package, pip or the tests import needs them.
    off=()
    for module in _ctypes _lzma _uuid nis _bz2 _crypt _curses _curses_panel _dbm _gdbm _tkinter \
        readline _sqlite3; do off+=("py_cv_module_$module=n/a"); done
    dir=$(unpack "$(fetch_orig python3.11 "$(suite_version python3.11 bookworm)")" cpython)
    (cd "$dir" && ./configure --prefix="$python" --with-openssl="$prefix" --with-ensurepip=install \
        "${off[@]}" CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib" >"$work/build/cpython-configure.log" &&
        make -s -j"$jobs" >"$work/build/cpython-make.log" 2>&1 &&
        make -s install >"$work/build/cpython-install.log" 2>&1)
    touch "$python/.built"
fi

step "the interpreter runs on musl's dynamic linker"
readelf -l "$python/bin/python3.11" | grep -o 'program interpreter: [^]]*'
"$musl/lib/libc.so" 2>&1 | head -2 || true   # musl's loader run bare prints its version
readelf -d "$python/bin/python3.11" | grep NEEDED
! readelf -d "$python/bin/python3.11" | grep -q 'libc\.so\.6' || { echo "linked against glibc" >&2; exit 1; }

step "a fresh virtualenv of it: the wheel and the test tools, chosen by that interpreter's pip"
rm -rf "$work/venv" "$work/run"
"$python/bin/python3.11" -m venv "$work/venv"
# No CA bundle was built for this OpenSSL: it uses the system's to reach PyPI.
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary socketserver-rs "$wheel[test]"
"$work/venv/bin/python" - "$work/venv" <<'PY'
import pathlib, subprocess, sys, sysconfig
from pip._vendor.packaging import tags
import socketserver_rs._core as core
venv = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(core.__file__).resolve()
assert venv in where.parents, where
platforms = {tag.platform for tag in tags.sys_tags()}
assert "musllinux_1_2_x86_64" in platforms, sorted(platforms)[:5]
print("pip's tags include musllinux_1_2_x86_64; first tag:", next(iter(tags.sys_tags())))
print("extension:", where)
needed = subprocess.run(["readelf", "-d", str(where)], capture_output=True, text=True).stdout
print("".join(line + "\n" for line in needed.splitlines() if "NEEDED" in line), end="")
assert "libc.musl-x86_64.so.1" in needed, needed
with open("/proc/self/maps") as maps:
    libs = sorted({line.split()[-1] for line in maps if ".so" in line.split()[-1]})
assert not any("x86_64-linux-gnu" in lib for lib in libs), libs
print("C library mapped:", *(lib for lib in libs if pathlib.Path(lib).name.startswith(("libc.", "ld-"))))
PY

step "the whole suite on the musl wheel (CPython's own test_socketserver included)"
mkdir -p "$work/run"
cp -R "$here/tests" "$here/examples" "$here/pyproject.toml" "$work/run/"
rm -rf "$work/run/tests/__pycache__"
cd "$work/run"
SOCKETSERVER_RS_EXPECT_WHEEL=1 "$work/venv/bin/python" -m pytest -p no:cacheprovider "${@:3}"
