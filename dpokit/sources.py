"""Where preference data comes from: a hub id, a local file or directory, or a `save_to_disk` folder.

Returns a `datasets.Dataset` as stored (no normalisation yet). A file that cannot be read is named,
with the line of a JSON-lines file that breaks it; a directory's hidden files and folders (such as
JupyterLab's `.ipynb_checkpoints/`) are skipped and reported.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from .errors import DataError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".gz": "json", ".parquet": "parquet", ".csv": "csv"}


def load_raw(ds_cfg, notes: list[str] | None = None):
    """Load the configured split as a `datasets.Dataset`; what was skipped is appended to `notes`."""
    import datasets

    name = ds_cfg.name
    path = Path(name).expanduser()
    if name.startswith("embedded:"):
        raise DataError("load_raw does not handle embedded datasets; use load_preference_data")
    if path.exists():
        return _load_local(path, ds_cfg, notes if notes is not None else [])
    if _looks_like_path(name):
        raise DataError(f"dataset.name: '{name}' looks like a path but does not exist "
                        f"(relative paths are resolved from {Path.cwd()}). Check the path.")
    try:
        return datasets.load_dataset(name, ds_cfg.subset, split=ds_cfg.split)
    except ValueError as e:  # unknown split or subset
        raise DataError(f"dataset.split/subset: cannot load '{name}' (subset={ds_cfg.subset!r}, "
                        f"split={ds_cfg.split!r}): {_first_line(e)}") from None
    except Exception as e:  # offline, missing repo, auth ...
        offline = "offline" in str(e).lower() or _hub_offline()
        msg = (f"dataset.name: '{name}' is not a local file or directory and cannot be fetched from the "
               f"Hugging Face Hub ({type(e).__name__}: {_first_line(e)}).")
        if offline:
            msg += " HF_HUB_OFFLINE is set or there is no network: download it once on a machine with access " \
                   "(`datasets.load_dataset(...).save_to_disk(DIR)` or the hub cache), or use a local file."
        raise DataError(msg) from None


def data_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(data files, skipped files) of a folder: files under a hidden name (`.x`, `.ipynb_checkpoints/`)
    are skipped, so editor and notebook copies never double the rows."""
    files, skipped = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or not _builder_for(p):
            continue
        hidden = any(part.startswith(".") for part in p.relative_to(folder).parts)
        (skipped if hidden else files).append(p)
    return files, skipped


def _load_local(path: Path, ds_cfg, notes: list[str]):
    import datasets

    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if ds_cfg.split not in loaded:
                    raise DataError(f"dataset.split: '{ds_cfg.split}' is not in {path}; splits: {list(loaded)}")
                return loaded[ds_cfg.split]
            return loaded
        files, skipped = data_files(path)
        if skipped:
            notes.append(f"skipped {len(skipped)} hidden file(s) in {path} (e.g. {skipped[0].relative_to(path)})")
        if not files:
            raise DataError(f"dataset.name: directory {path} has no .jsonl/.json/.jsonl.gz/.parquet/.csv files"
                            + (" outside hidden folders" if skipped else ""))
        split_files = [p for p in files if p.name.split(".")[0] == ds_cfg.split] or files
        builders = {_builder_for(p) for p in split_files}
        if len(builders) > 1:
            raise DataError(f"dataset.name: directory {path} mixes file types ({', '.join(sorted(builders))}); "
                            "keep one type per folder, or name the split's files <split>.<ext>")
        return _load_files(builders.pop(), split_files)
    builder = _builder_for(path)
    if builder is None:
        raise DataError(f"dataset.name: {path} has an unsupported extension; use .jsonl, .json, .jsonl.gz, "
                        ".parquet or .csv")
    return _load_files(builder, [path])


def _load_files(builder: str, files: list[Path]):
    import logging

    import datasets

    for f in files:  # the readers accept invalid UTF-8 and fail later, far from the file
        problem = utf8_problem(f) if builder in ("json", "csv") else None
        if problem:
            raise DataError(f"dataset.name: could not read {f}: {problem}; save it as UTF-8")

    # datasets logs its own traceback for unreadable files; ours is the message the user needs
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as e:
        culprit, detail = _find_culprit(builder, files, e)
        kind = "JSON lines (one JSON object per line)" if builder == "json" else builder
        raise DataError(f"dataset.name: could not read {culprit} as {kind}: {detail}. Check the file format "
                        "(a .jsonl file needs one JSON object per line, every row with the same columns and "
                        "kinds of value).") from None
    finally:
        ds_logger.setLevel(level)


def _find_culprit(builder: str, files: list[Path], error: Exception) -> tuple[Path, str]:
    """The file (and, for JSON, the line) that made loading fail."""
    for f in files:
        problem = diagnose_file(f) if builder == "json" else None
        if problem:
            return f, problem
    if len(files) > 1:
        import datasets

        for f in files:
            try:
                datasets.load_dataset(builder, data_files=[str(f)], split="train")
            except Exception as e:
                return f, _first_line(e)
    return files[0], _first_line(error)


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def utf8_problem(path: Path) -> str | None:
    """'line N: not UTF-8 text ...' for a file that is not UTF-8, else None (unreadable files too)."""
    try:
        raw = _read_bytes(path)
        raw.decode("utf-8")
    except (OSError, EOFError):
        return None  # the reader reports these itself
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        return f"line {line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r})"
    return None


def diagnose_file(path: Path) -> str | None:
    """What is wrong with a JSON / JSON-lines file, naming the line; None if nothing is found.

    Checks that it is UTF-8, that every line of a .jsonl file is one JSON object, and that a column
    holds the same kind of value (text, number, list, object) on every line."""
    jsonl = not path.name.endswith((".json", ".json.gz"))
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError) as e:
        return f"cannot be read ({e})"
    if problem := utf8_problem(path):
        return problem
    text = raw.decode("utf-8")
    if not jsonl:
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return f"line {e.lineno}: {e.msg} (column {e.colno})"
        return None
    kinds: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {n}: {e.msg} (column {e.colno}); each line must be one JSON object"
        if not isinstance(row, dict):
            return f"line {n}: a JSON {type(row).__name__}, not an object with named columns"
        for key, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            first = kinds.setdefault(key, (kind, n))
            if first[0] != kind:
                return (f"line {n}: column '{key}' holds {kind} but {first[0]} on line {first[1]}; every row "
                        "must hold the same kind of value")
    return None


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _builder_for(path: Path) -> str | None:
    suffixes = "".join(path.suffixes[-2:])
    if suffixes.endswith((".jsonl.gz", ".json.gz")):
        return "json"
    return FILE_BUILDERS.get(path.suffix) if path.suffix != ".gz" else None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or _builder_for(Path(name)) is not None or name.count("/") > 1


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
