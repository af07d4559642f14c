"""Errors written for the person reading them: what is wrong, where, and what to do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in a config or dataset: where (dotted path, column, row), what, and the fix."""

    where: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        if self.hint:
            text += f"\n      fix: {self.hint}"
        return text


class DpokitError(Exception):
    """Base class for problems dpokit explains to the user (exit status 2, no traceback)."""

    exit_code = 2


class ConfigError(DpokitError):
    """The config has one or more problems; all of them are listed at once."""

    def __init__(self, problems: list[Problem], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{len(self.problems)} problem(s) in {source}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class DataError(DpokitError):
    """The dataset cannot be used as configured (missing file, column, rows ...)."""


class ModelError(DpokitError):
    """The model or tokenizer cannot be loaded or does not fit the config."""


class EnvironmentProblem(DpokitError):
    """The machine or installed packages cannot do what the config asks."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (SIGINT = Ctrl-C, SIGTERM = what `timeout`, Docker, Slurm and
    Kubernetes send) after saving a checkpoint. The CLI exits with 128 + the signal number."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum
