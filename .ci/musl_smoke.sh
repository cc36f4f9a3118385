#!/usr/bin/env bash
# Run a musllinux wheel (x86_64 or aarch64) on a musl libc here, on Debian, without a container:
# musl 1.2.5 (Debian's source package), CPython 3.11 (Debian's source) built with that musl's gcc
# wrapper against zlib and OpenSSL built the same way, so that the interpreter, every stdlib
# extension module and the wheel's `_core` run on musl's dynamic linker.
#
# - x86_64: everything runs natively. That interpreter's own pip picks and installs the wheel
#   and the test tools (cryptography and cffi as their musllinux wheels) into a virtualenv,
#   which runs our whole pytest suite, CPython's test_socketserver included.
# - aarch64: musl, zlib, OpenSSL and CPython are cross-compiled with Debian's
#   aarch64-linux-gnu gcc, and the interpreter runs under qemu-user (as .ci/aarch64_smoke.sh
#   runs the glibc wheel). The host's pip resolves the wheel and the test tools for
#   musllinux aarch64 into the virtualenv (no pip under emulation), and the same smoke subset
#   as the glibc wheel's runs: CPython's test_socketserver, the API, servers and packaging
#   tests.
#
#   .ci/musl_smoke.sh WHEEL WORKDIR [PYTEST_ARGS...]    (Debian/Ubuntu with apt; root or sudo)
#
# WORKDIR caches the sources and the built musl, libraries and interpreter (delete it to start
# from scratch, about 6 minutes on two cores for x86_64, about 5 for aarch64); the virtualenv
# and the copy of the tests are made afresh each run. Use one WORKDIR per architecture.
# Downloads come only from deb.debian.org (upstream tarballs named by a source package's .dsc
# and checked against the SHA-256 it gives) and PyPI.
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

# What differs between the architectures: the compiler's prefix and the kernel's headers for
# the target, OpenSSL's name for it, and (aarch64) configure's cross-compiling arguments.
packages=(gcc linux-libc-dev perl make curl xz-utils binutils ca-certificates)
case "$(basename "$wheel")" in
    *-musllinux_1_2_x86_64.whl)
        arch=x86_64 cross="" cflags=""
        kernel_include=/usr/include asm_include=/usr/include/x86_64-linux-gnu/asm
        ;;
    *-musllinux_1_2_aarch64.whl)
        # Debian's aarch64 gcc calls out to libgcc for atomics by default, and libgcc's
        # helpers ask glibc's __getauxval() whether the CPU has LSE: inline atomics instead.
        arch=aarch64 cross=aarch64-linux-gnu- cflags=-mno-outline-atomics
        kernel_include=/usr/aarch64-linux-gnu/include asm_include=/usr/aarch64-linux-gnu/include/asm
        packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
        ;;
    *) echo "not an x86_64 or aarch64 musllinux_1_2 wheel: $wheel" >&2; exit 2 ;;
esac
export AR=${cross}ar RANLIB=${cross}ranlib

step "Debian packages: gcc (aarch64: its cross compiler and qemu-user), kernel headers, perl for OpenSSL's Configure"
export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in "${packages[@]}"; do
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
    step "musl $version (Debian trixie's source) for $arch, its dynamic linker in $musl/lib"
    dir=$(unpack "$(fetch_orig musl "$version")" musl)
    # musl's configure takes a --target as "cross-compile with $target-gcc": only when crossing.
    target=()
    if [ -n "$cross" ]; then target=(--target="$arch" CROSS_COMPILE="$cross"); fi
    (cd "$dir" && ./configure "${target[@]}" --prefix="$musl" --syslibdir="$musl/lib" >/dev/null &&
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
for dir in linux asm-generic mtd; do ln -sfn "$kernel_include/$dir" "$work/kernel-headers/$dir"; done
ln -sfn "$asm_include" "$work/kernel-headers/asm"
cat >"$work/bin/musl-cc" <<EOF
#!/bin/sh
for arg; do case "\$arg" in -print-multiarch | --print-multiarch) exit 0 ;; esac; done
exec "$musl/bin/musl-gcc" $cflags -idirafter "$work/kernel-headers" "\$@"
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
    (cd "$dir" && ./Configure "linux-$arch" no-shared no-tests no-engine no-afalgeng \
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
    # CPython 3.11's configure takes the musl platform triplet (the SOABI in extension modules'
    # file names, cpython-311-<arch>-linux-musl, which Alpine's CPython and the musllinux
    # wheels of hypothesis, cffi and others use) from the *build* system's type, not the
    # host's: --build says musl, as the compiler it is given does. Cross-compiling (aarch64),
    # configure cannot run test programs: a CPython 3.11 of the host builds the frozen modules,
    # the site file answers the two checks that would look at the target's /dev, --enable-ipv6
    # stands for the getaddrinfo() test, and pkg-config sees only the libraries built here.
    configure_args=(--build="$(uname -m)-pc-linux-musl")
    if [ -z "$cross" ]; then
        configure_args+=(--with-ensurepip=install)
    else
        build_python=${BUILD_PYTHON:-$(command -v python3.11 || command -v python3)}
        "$build_python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
        printf 'ac_cv_file__dev_ptmx=yes\nac_cv_file__dev_ptc=no\n' >"$work/build/config.site"
        configure_args+=(--host="$arch-linux-musl" --with-ensurepip=no
            --with-build-python="$build_python" --enable-ipv6 CONFIG_SITE="$work/build/config.site"
            PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig" READELF="${cross}readelf")
    fi
    dir=$(unpack "$(fetch_orig python3.11 "$(suite_version python3.11 bookworm)")" cpython)
    (cd "$dir" && ./configure --prefix="$python" --with-openssl="$prefix" "${configure_args[@]}" \
        "${off[@]}" CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib" >"$work/build/cpython-configure.log" &&
        make -s -j"$jobs" >"$work/build/cpython-make.log" 2>&1 &&
        make -s install >"$work/build/cpython-install.log" 2>&1)
    # setup.py only reports a module it could not build: without _ssl, pip and the TLS tests
    # cannot run, so such a build is not kept.
    compgen -G "$python/lib/python3.11/lib-dynload/_ssl.*.so" >/dev/null ||
        { echo "CPython was built without _ssl: see $work/build/cpython-make.log" >&2; exit 1; }
    touch "$python/.built"
fi

# The interpreter as the tests start it. Emulated, it is a launcher that runs it under qemu-user
# and keeps its own path as argv[0], so that sys.executable (and a virtualenv's python)
# relaunch through qemu too; run=() runs musl's loader the same way.
interpreter=$python/bin/python3.11 run=()
if [ -n "$cross" ]; then
    run=("qemu-$arch-static")
    interpreter=$python/bin/python3.11-qemu
    printf '#!/bin/sh\nexec qemu-%s-static -0 "$0" "%s" "$@"\n' "$arch" "$python/bin/python3.11" >"$interpreter"
    chmod +x "$interpreter"
fi

step "the interpreter runs on musl's dynamic linker"
readelf -l "$python/bin/python3.11" | grep -o 'program interpreter: [^]]*'
"${run[@]}" "$musl/lib/libc.so" 2>&1 | head -2 || true   # musl's loader run bare prints its version
readelf -d "$python/bin/python3.11" | grep NEEDED
! readelf -d "$python/bin/python3.11" | grep -q 'libc\.so\.6' || { echo "linked against glibc" >&2; exit 1; }
"$interpreter" - "$arch" <<'PY'
import platform, ssl, sys, sysconfig
soabi = sysconfig.get_config_var("SOABI")
print("interpreter:", platform.python_version(), platform.machine(), soabi, ssl.OPENSSL_VERSION)
assert soabi == f"cpython-311-{sys.argv[1]}-linux-musl", f"{soabi}: a stale build? delete the WORKDIR"
PY

step "a fresh virtualenv of it: the wheel and the test tools, chosen by pip for musllinux_1_2_$arch"
rm -rf "$work/venv" "$work/run"
# No CA bundle was built for this OpenSSL: it uses the system's to reach PyPI.
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
if [ -z "$cross" ]; then
    "$interpreter" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --only-binary socketserver-rs "$wheel[test]"
else
    # pip under emulation would take minutes; the host's resolves for the target instead
    # (cffi's musllinux wheels are tagged 1_1, cryptography's 1_2).
    "$interpreter" -m venv --without-pip "$work/venv"
    python3 -m pip install --quiet --disable-pip-version-check \
        --target "$work/venv/lib/python3.11/site-packages" --implementation cp --python-version 3.11 \
        --platform "musllinux_1_2_$arch" --platform "musllinux_1_1_$arch" --only-binary=:all: "$wheel[test]"
fi
"$work/venv/bin/python" - "$work/venv" "$arch" <<'PY'
import pathlib, subprocess, sys
import socketserver_rs._core as core
venv, arch = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
where = pathlib.Path(core.__file__).resolve()
assert venv in where.parents, where
try:
    from pip._vendor.packaging import tags
except ImportError:
    print(f"no pip in this virtualenv: the host's pip chose the wheels for musllinux_1_2_{arch}")
else:
    platforms = {tag.platform for tag in tags.sys_tags()}
    assert f"musllinux_1_2_{arch}" in platforms, sorted(platforms)[:5]
    print(f"pip's tags include musllinux_1_2_{arch}; first tag:", next(iter(tags.sys_tags())))
print("extension:", where)
needed = subprocess.run(["readelf", "-d", str(where)], capture_output=True, text=True).stdout
print("".join(line + "\n" for line in needed.splitlines() if "NEEDED" in line), end="")
assert f"libc.musl-{arch}.so.1" in needed, needed
with open("/proc/self/maps") as maps:
    libs = sorted({line.split()[-1] for line in maps if ".so" in line.split()[-1]})
assert not any("-linux-gnu/" in lib for lib in libs), libs
print("C library mapped:", *(lib for lib in libs if pathlib.Path(lib).name.startswith(("libc.", "ld-"))))
PY

# Emulated, the same subset as the glibc aarch64 wheel's (.ci/emulated_tests); natively, all.
tests=("${@:3}")
if [ -n "$cross" ] && [ "${#tests[@]}" -eq 0 ]; then
    mapfile -t tests < <(grep -v '^#' "$here/.ci/emulated_tests")
fi
step "the suite on the musl wheel (CPython's own test_socketserver included): ${tests[*]:-all of it}"
mkdir -p "$work/run"
cp -R "$here/tests" "$here/examples" "$here/pyproject.toml" "$work/run/"
rm -rf "$work/run/tests/__pycache__"
cd "$work/run"
SOCKETSERVER_RS_EXPECT_WHEEL=1 "$work/venv/bin/python" -m pytest -p no:cacheprovider "${tests[@]}"
