"""Packaging: livemig.* only, importable from anywhere, installable in a fresh venv."""
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_only_livemig_namespaced_packages_are_installed():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = data["tool"]["setuptools"]["packages"]
    assert packages and all(p == "livemig" or p.startswith("livemig.") for p in packages)
    mapped = data["tool"]["setuptools"]["package-dir"]
    for folder in ("spec", "core", "engine", "conformance", "diagrams"):
        assert mapped[f"livemig.{folder}"] == folder


def test_every_package_folder_is_listed():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(data["tool"]["setuptools"]["packages"])
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in {"tests", ".venv", "build", "benchmarks"} or "out" in rel.parts:
            continue
        top = rel.parts[0]
        name = "livemig" if top == "livemig" else ".".join(["livemig", *rel.parts])
        if top == "livemig":
            name = ".".join(rel.parts)
        assert name in listed, f"{rel} is a package folder but {name} is not in pyproject"


def test_import_from_another_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-c",
                           "import livemig.core, livemig.spec; print(livemig.core.__name__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "livemig.core"


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv(tmp_path):
    """`pip install .` (not editable) into a new venv, then import from elsewhere.

    Runtime dependencies are borrowed from the running environment through a
    .pth line (no network needed for them; that environment's editable-install
    hook is not activated by it, so the import must find the installed copy).
    The build backend comes through pip's normal build isolation.
    """
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = next((env_dir / "lib").glob("python*/site-packages"))
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([str(python), "-c",
                           "import livemig.spec, livemig.core, pathlib, livemig;"
                           "print(pathlib.Path(livemig.spec.__file__).parent.parent.name)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "livemig"  # installed copy, not the source tree
    for bare in ("spec", "core", "engine", "conformance", "diagrams"):
        assert not list((env_dir / "lib").glob(f"python*/site-packages/{bare}")), bare
