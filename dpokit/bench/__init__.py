"""Public benchmarks, shipped with dpokit and scored offline.

`ifeval`: the 541 IFEval prompts (package data) and their checkers (`if-verifiable`), with the
NLTK data they need replaced by pip-installed tokenizers (`nltk_offline`). `harness`: answer the
prompts with a model and score the answers, with the settings and timings recorded.
"""
