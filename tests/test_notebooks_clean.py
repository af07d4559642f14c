"""The teaching notebooks as committed: clean, parameterised for papermill, and offline.

Executing them is CI's other half (`pytest --nbmake notebooks/`); these checks are fast and run
with the unit tests, so a notebook saved with outputs, or one papermill cannot parameterise,
is caught before anything executes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMS = ROOT / "notebooks" / "params"
# Anything that installs, downloads or logs in: notebooks run offline, on what `make setup` installed.
FORBIDDEN = {
    "pip install": re.compile(r"\bpip3?\s+install\b|%pip\b|%conda\b|\bconda\s+install\b"),
    "shell command": re.compile(r"^\s*!", re.M),
    "hub download": re.compile(r"hf_hub_download|snapshot_download|huggingface-cli|\bhf\s+download\b"),
    "login": re.compile(r"notebook_login|\blogin\s*\(|wandb\.login|HF_TOKEN|WANDB_API_KEY"),
    "web request": re.compile(r"urlretrieve|urlopen|requests\.get|\bwget\b|\bcurl\b"),
}


def load(path: Path):
    return nbformat.read(path, as_version=4)


def parameter_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def parameter_names(nb) -> set[str]:
    [cell] = parameter_cells(nb)
    return {t.id for node in ast.parse(cell.source).body for t in node.targets}


def test_every_lesson_of_the_kit_is_there():
    names = [p.stem for p in NOTEBOOKS]
    for expected in ("00_quickstart", "01_dataset_prep", "02_loss_variants", "03_tuning_beta",
                     "04_memory_tricks", "05_evaluation", "07_learning_rate", "08_batch_epochs_data"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = load(path)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name} is a papermill output, not the source notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_python3_kernel(path):
    assert load(path).metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_exactly_one_parameters_cell_near_the_top(path):
    nb = load(path)
    cells = parameter_cells(nb)
    assert len(cells) == 1, f"{path.name} has {len(cells)} cells tagged 'parameters'; papermill needs exactly one"
    assert nb.cells.index(cells[0]) <= 2, "the parameters cell belongs right after the objectives"
    assert cells[0].cell_type == "code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_plain_assignments_of_literals(path):
    """papermill overrides by appending assignments; anything computed here would not follow them."""
    [cell] = parameter_cells(load(path))
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets), \
            f"{path.name}: parameters cell line {node.lineno} is not `name = literal`"
        ast.literal_eval(node.value)  # raises if the value is computed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_installs_downloads_and_logs_in_nothing(path):
    for i, cell in enumerate(load(path).cells):
        if cell.cell_type != "code":
            continue
        for what, pattern in FORBIDDEN.items():
            assert not pattern.search(cell.source), f"{path.name} cell {i}: {what} ({pattern.search(cell.source)[0]!r})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_lesson_layout(path):
    """Objectives first, numbered sections, a results record and exercises at the end."""
    nb = load(path)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert "learning objectives" in markdown[0].lower()
    headings = [line for text in markdown for line in text.splitlines() if line.startswith("## ")]
    numbered = [h for h in headings if re.match(r"## \d+\. ", h)]
    assert len(numbered) >= 3, f"{path.name}: sections should be numbered (## 1. ...)"
    assert any("results record" in h.lower() for h in headings)
    assert "exercises" in headings[-1].lower()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_real_run_parameter_file_only_sets_parameters_the_notebook_has(path):
    """papermill injects unknown names without complaint; a typo here would silently do nothing."""
    params_file = PARAMS / f"{path.stem}.yaml"
    assert params_file.exists(), f"`make notebooks` reads {params_file.relative_to(ROOT)}"
    values = yaml.safe_load(params_file.read_text()) or {}
    unknown = set(values) - parameter_names(load(path))
    assert not unknown, f"{params_file.name} sets {sorted(unknown)}, which {path.name} does not define"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """papermill parses the parameters cell line by line (an '=' in a comment defeats it); a parameter it
    cannot read still gets injected, but `papermill -p` then warns that the name is unknown."""
    from papermill.translators import PythonTranslator

    [cell] = parameter_cells(load(path))
    assert {p.name for p in PythonTranslator.inspect(cell)} == parameter_names(load(path))
