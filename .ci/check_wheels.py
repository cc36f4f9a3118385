"""Check what `make wheels` put into dist/: the four Linux abi3 wheels and the sdist.

    python .ci/check_wheels.py [DIST]      (DIST defaults to dist; needs auditwheel, objdump)

For every wheel: `auditwheel show` must agree with the platform tag in its name, and its
extension module must be an ELF for the architecture the tag names. For the glibc wheels,
no versioned glibc symbol the extension needs may be newer than 2.17 (the manylinux2014
baseline; read with `objdump -T`). Prints what it found and exits non-zero on any mismatch,
so CI fails on a regression (a newer glibc symbol, a wrong tag, a missing wheel).
"""

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from tempfile import TemporaryDirectory

# The wheels `make wheels` builds: (platform tag auditwheel must report, ELF machine).
EXPECTED = {
    "manylinux_2_17_x86_64": "x86_64",
    "manylinux_2_17_aarch64": "aarch64",
    "musllinux_1_2_x86_64": "x86_64",
    "musllinux_1_2_aarch64": "aarch64",
}
GLIBC_BASELINE = (2, 17)
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine values
WHEEL_NAME = re.compile(r"^socketserver_rs-[^-]+-cp311-abi3-(?P<platforms>[^-]+)\.whl$")


def fail(message):
    print(f"FAILED: {message}")
    return 1


def elf_machine(path):
    header = path.read_bytes()[:20]
    if header[:4] != b"\x7fELF" or header[5] != 1:  # little-endian only (EI_DATA)
        return None
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "other")


def glibc_versions(extension):
    """The GLIBC_x.y versions of the dynamic symbols the extension needs, newest first."""
    out = subprocess.run(
        ["objdump", "-T", str(extension)], check=True, capture_output=True, text=True
    ).stdout
    found = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", out)}
    return sorted(found, reverse=True)


def auditwheel_tags(wheel):
    """The platform tags `auditwheel show` says the wheel is consistent with."""
    proc = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        capture_output=True,
        text=True,
    )
    text = " ".join((proc.stdout + proc.stderr).split())
    if proc.returncode != 0:
        raise RuntimeError(f"auditwheel show failed: {text}")
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    if not match:
        raise RuntimeError(f"auditwheel show reported no platform tag: {text}")
    return match.group(1), text


def check_wheel(wheel, workdir):
    """Problems found in one wheel (empty: none); prints what it checked."""
    problems = []
    platforms = WHEEL_NAME.match(wheel.name)
    if not platforms:
        return [f"{wheel.name}: not a cp311-abi3 wheel of socketserver_rs"]
    tags = platforms["platforms"].split(".")
    expected = [tag for tag in tags if tag in EXPECTED]
    if len(expected) != 1:
        return [f"{wheel.name}: carries none of the expected tags {sorted(EXPECTED)}"]
    tag = expected[0]
    print(f"{wheel.name}  ({wheel.stat().st_size:,} bytes)")

    reported, _ = auditwheel_tags(wheel)
    print(f"  auditwheel show: consistent with {reported}")
    if reported != tag:
        problems.append(f"{wheel.name}: auditwheel says {reported}, the name says {tag}")

    with zipfile.ZipFile(wheel) as archive:
        modules = [n for n in archive.namelist() if n.endswith(".so")]
        if modules != ["socketserver_rs/_core.abi3.so"]:
            return [*problems, f"{wheel.name}: expected one extension module, found {modules}"]
        extension = Path(archive.extract(modules[0], workdir / wheel.stem))
    machine = elf_machine(extension)
    print(f"  {modules[0]}: ELF {machine}")
    if machine != EXPECTED[tag]:
        problems.append(f"{wheel.name}: the extension is {machine}, the tag says {EXPECTED[tag]}")

    if tag.startswith("manylinux"):
        versions = glibc_versions(extension)
        newest = ".".join(map(str, versions[0])) if versions else "none"
        listed = ", ".join("GLIBC_" + ".".join(map(str, v)) for v in versions)
        print(f"  objdump -T: newest glibc symbol version GLIBC_{newest} (all: {listed})")
        if versions and versions[0] > GLIBC_BASELINE:
            problems.append(f"{wheel.name}: needs GLIBC_{newest}, newer than 2.17")
    return problems


def main(dist):
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("socketserver_rs-*.tar.gz"))
    problems = []
    if len(sdists) != 1:
        problems.append(f"expected one sdist in {dist}, found {[s.name for s in sdists]}")
    else:
        print(f"{sdists[0].name}  ({sdists[0].stat().st_size:,} bytes)")
    with TemporaryDirectory() as tmp:
        for wheel in wheels:
            problems += check_wheel(wheel, Path(tmp))
    found = {t for w in wheels for t in w.name[:-4].split("-")[-1].split(".") if t in EXPECTED}
    if missing := sorted(set(EXPECTED) - found):
        problems.append(f"no wheel for {', '.join(missing)}")
    if len(wheels) != len(EXPECTED):
        problems.append(f"expected {len(EXPECTED)} wheels, found {len(wheels)}")
    for problem in problems:
        fail(problem)
    if not problems:
        print(f"all {len(wheels)} wheels and the sdist check out")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
