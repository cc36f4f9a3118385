"""The package as installed: its version, the files it ships, its public names.

These run against whatever ``import socketserver_rs`` finds: the editable install of a
development tree (``make build``), or a wheel installed into a fresh virtualenv, as CI does
(``.ci/run`` sets ``SOCKETSERVER_RS_EXPECT_WHEEL=1`` there, and then the package must come
from that virtualenv's site-packages, not from a source tree).
"""

import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import inspect
import os
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
import socketserver_rs

DISTRIBUTION = "socketserver-rs"
EXPECT_WHEEL = os.environ.get("SOCKETSERVER_RS_EXPECT_WHEEL") == "1"


def installed_files():
    """The package's files listed in the distribution's RECORD, as paths inside the package
    (``None`` for an editable install, whose RECORD lists a path hook instead)."""
    files = importlib.metadata.distribution(DISTRIBUTION).files or []
    inside = [f for f in files if f.parts[0] == "socketserver_rs"]
    return {"/".join(f.parts[1:]) for f in inside} or None


def package_dir():
    return Path(socketserver_rs.__file__).resolve().parent


def test_version_is_the_distribution_version():
    with warnings.catch_warnings():
        # This test is about the value; the 3.15 deprecation warning that comes with reading
        # it is pinned by test_api.test_reading_version_warns_from_3_15_on_as_the_stdlib_does.
        warnings.simplefilter("ignore", DeprecationWarning)
        version = socketserver_rs.__version__
    assert version == importlib.metadata.version(DISTRIBUTION)
    assert version != "0+unknown"


def test_every_name_in_all_resolves_to_a_public_object():
    for name in socketserver_rs.__all__:
        value = getattr(socketserver_rs, name)
        assert value.__module__ == "socketserver_rs", name


def _own_docstring(obj):
    return bool((obj.__doc__ or "").strip())


def test_every_public_class_function_and_method_has_a_docstring():
    """Each public class and function, and every public method or property defined on them
    or on the package's classes they inherit from, has a docstring of its own."""
    missing = set()
    for name in socketserver_rs.__all__:
        value = getattr(socketserver_rs, name)
        if not _own_docstring(value):
            missing.add(name)
        if not isinstance(value, type):
            continue
        for cls in value.__mro__:
            if not cls.__module__.startswith("socketserver_rs"):
                continue
            for attribute, member in vars(cls).items():
                public = not attribute.startswith("_") or attribute in ("__enter__", "__exit__")
                routine = inspect.isfunction(member) or isinstance(member, property)
                if public and routine and not _own_docstring(member):
                    missing.add(f"{cls.__qualname__}.{attribute}")
    assert sorted(missing) == []


def test_typing_marker_and_native_stub_ship_with_the_package():
    package = importlib.resources.files("socketserver_rs")
    assert package.joinpath("py.typed").is_file()
    stub = package.joinpath("_core.pyi").read_text()
    for name in socketserver_rs._core.__all__:
        assert f"class {name}" in stub or f"def {name}(" in stub, name


def test_native_module_is_the_abi3_extension_next_to_the_package():
    core = Path(socketserver_rs._core.__file__).resolve()
    assert core.parent == package_dir()
    assert core.name.endswith(".abi3.so")


def test_installed_files_include_the_typing_files_and_the_extension():
    files = installed_files()
    if files is None:
        assert not EXPECT_WHEEL, "expected a wheel install, found an editable one"
        pytest.skip("editable install: the package files are the source tree's")
    assert {"__init__.py", "py.typed", "_core.pyi"} <= files
    assert any(name.startswith("_core.") and name.endswith(".abi3.so") for name in files)
    # Nothing from the repository beyond the package itself.
    assert all(not name.startswith(("tests/", "rust/", "benches/")) for name in files)


@pytest.mark.skipif(not EXPECT_WHEEL, reason="runs against a wheel install (CI sets it up)")
def test_package_is_imported_from_the_fresh_virtualenv_not_a_source_tree():
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(sys.prefix).resolve() in site_packages.parents
    assert site_packages in package_dir().parents, (package_dir(), site_packages)
    for entry in sys.path:  # no other directory (a source tree's python/) offers the package
        directory = Path(entry or ".").resolve()
        if directory != site_packages:
            assert not (directory / "socketserver_rs").exists(), entry
    # A fresh import resolves to the same place.
    spec = importlib.util.find_spec("socketserver_rs")
    assert Path(spec.origin).resolve().parent == package_dir()


def test_the_launchers_sitecustomize_and_the_pytest_plugin_ship_with_the_package():
    package = importlib.resources.files("socketserver_rs")
    assert package.joinpath("_site", "sitecustomize.py").is_file()
    assert package.joinpath("testing.py").is_file()
    # Nothing else in the launcher's directory: it goes first on PYTHONPATH, where any other
    # module would shadow one of the program's.
    assert sorted(
        p.name for p in package.joinpath("_site").iterdir() if p.name != "__pycache__"
    ) == ["sitecustomize.py"]
    files = installed_files()
    if files is not None:  # a wheel: its RECORD lists them
        assert {"_site/sitecustomize.py", "testing.py", "_launcher.py"} <= files


def test_the_pytest_plugin_is_registered_through_the_pytest11_entry_point():
    (entry_point,) = [
        ep
        for ep in importlib.metadata.distribution(DISTRIBUTION).entry_points
        if ep.group == "pytest11"
    ]
    assert (entry_point.name, entry_point.value) == (
        "socketserver_rs.testing",
        "socketserver_rs.testing",
    )
    assert entry_point.load() is importlib.import_module("socketserver_rs.testing")
