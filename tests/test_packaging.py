"""environment.yml (conda/mamba) and pyproject.toml list the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {name(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted


def test_torch_is_pinned_the_same_in_setup_and_environment():
    env = (ROOT / "environment.yml").read_text()
    make = (ROOT / "Makefile").read_text()
    pin = re.search(r"TORCH_SPEC \?= (torch==[\d.]+)", make).group(1)
    assert pin in env
