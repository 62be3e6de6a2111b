"""The wheel and the sdist, as users get them: built by ``python -m build`` and installed
into a fresh venv, with no checkout on ``sys.path``.

Every other test imports kegpackd from the checkout (an editable install), so a module left
out of the package, or a dependency missing from pyproject.toml, would only show here. The
build and the install fetch setuptools and kegpackd's dependencies through pip (the index,
or pip's cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dockertools import Docker

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    # A directory outside the checkout, to run from.
    outside: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A program of the venv, from ``outside``, without PYTHONPATH."""
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return run(
            self.venv / "bin" / args[0], *args[1:], cwd=self.outside, env={**clean, **(env or {})}
        )


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    return done


def checked(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def source_copy(dest: Path) -> Path:
    """The checkout's files as a clone would have them (tracked, or new and not ignored):
    the build must not depend on what lies around in the working tree."""
    listed = checked(run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                         cwd=REPO)).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the sdist and, from it, the wheel; install the wheel into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = source_copy(root / "src")
    dist = root / "dist"
    # No --sdist/--wheel: build then makes the wheel from the sdist, which tests the sdist too.
    checked(run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=root))
    (wheel,) = dist.glob("kegpackd-*.whl")
    (sdist,) = dist.glob("kegpackd-*.tar.gz")
    venv = root / "venv"
    checked(run(sys.executable, "-m", "venv", venv, cwd=root))
    checked(run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=root))
    (root / "outside").mkdir()
    return Installed(wheel, sdist, venv, root / "outside")


def test_the_installed_kegpackd_states_the_projects_version(installed: Installed) -> None:
    """`kegpackd --version` of the venv prints pyproject.toml's version."""
    done = checked(installed.run("kegpackd", "--version"))
    assert done.stdout == f"kegpackd {VERSION}\n"


def test_the_installed_kegpackd_is_imported_from_the_venv(installed: Installed) -> None:
    """The venv's Python finds kegpackd in its own site-packages, not in the checkout."""
    done = checked(installed.run("python", "-c", "import kegpackd; print(kegpackd.__file__)"))
    where = Path(done.stdout.strip())
    assert where.is_relative_to(installed.venv), where
    assert not where.is_relative_to(REPO), where


def test_the_wheel_holds_the_package_and_nothing_else(installed: Installed) -> None:
    """The wheel's top level is kegpackd/ and its metadata: no tests, bench or deploy."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        top = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert top == {"kegpackd", f"kegpackd-{VERSION}.dist-info"}


@pytest.mark.engine
def test_the_installed_kegpackd_packages_a_container(docker: Docker, installed: Installed) -> None:
    """`kegpackd package` of the venv makes an image holding the mount's file."""
    keg = docker.tmp / "keg"
    keg.mkdir()
    (keg / "hello.txt").write_text("from the wheel\n")
    cid = docker.container("-l", "kegpack.package=true", "-v", f"{keg}:/keg")
    done = checked(
        installed.run("kegpackd", "package", cid, env={"DOCKER_HOST": docker.env.docker_host})
    )
    (reference,) = done.stdout.split()
    docker.track_image(reference)
    assert docker.run_image(reference, "cat", "/keg/hello.txt") == "from the wheel\n"
