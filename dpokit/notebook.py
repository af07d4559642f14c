"""Helpers the lessons share: paths that mean the same from JupyterLab, nbmake and papermill,
notebook parameters given as text, and saving figures for the README. Importing it honours TQDM_DISABLE
for the libraries' own progress bars (`console.apply_bars_setting`)."""

from __future__ import annotations

from pathlib import Path

from .console import apply_bars_setting

MARKER = Path("configs") / "quickstart.yaml"  # a file only the project root has

# `make notebooks` and papermill runs set TQDM_DISABLE=1: no frozen progress bars in the executed lessons
apply_bars_setting()


def project_root(start: str | Path | None = None) -> Path:
    """The dpokit checkout at or above `start` (default: the working directory), else the working directory.

    JupyterLab and nbmake run notebooks inside notebooks/, `make notebooks` from the project root;
    paths in the notebooks' parameters mean the same from both."""
    here = Path(start or Path.cwd()).resolve()
    return next((c for c in (here, *here.parents) if (c / MARKER).is_file()), here)


def resolve_path(path: str | Path | None) -> str | None:
    """An input path as given if it exists, else under the project root if it exists there; anything
    else (a hub id, `embedded:...`) unchanged."""
    if path is None or str(path).startswith("embedded:"):
        return path
    given = Path(path).expanduser()
    if given.exists():
        return str(given)
    candidate = project_root() / given
    return str(candidate) if candidate.exists() else str(path)


def output_path(path: str | Path) -> Path:
    """An output folder: absolute as given, relative ones under the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def save_figure(fig, figures_dir: str | Path | None, name: str) -> Path | None:
    """Save `fig` as `<figures_dir>/<name>.png` when a figures_dir is given (figures for the README)."""
    if not figures_dir:
        return None
    out = output_path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    return out / f"{name}.png"


def parameter(value):
    """A notebook parameter as given, or read as YAML when papermill's `-p` passed a list or dict
    as text (`-p betas "[0.05, 0.5]"` arrives as the string '[0.05, 0.5]')."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        import yaml

        return yaml.safe_load(value)
    return value
