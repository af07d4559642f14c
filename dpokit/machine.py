"""What this machine can do: CUDA devices and their precision support, and the CPU's bfloat16 support.

Read once per command (`DeviceInfo.detect`) and passed to the rules, the advice, the dry run and
the launcher, so that they all see the same machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    """CUDA devices and their bf16 support, and whether the CPU has native bfloat16 instructions."""

    cuda_devices: int
    bf16_ok: bool
    cpu_bf16_native: bool | None = None  # None: unknown (no /proc/cpuinfo, e.g. macOS)

    @classmethod
    def detect(cls) -> "DeviceInfo":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(cuda_devices=n, bf16_ok=bool(n and torch.cuda.is_bf16_supported()),
                   cpu_bf16_native=cpu_has_native_bf16())

    @property
    def device(self) -> str:
        """'cuda' when a CUDA device is visible, else 'cpu'."""
        return "cuda" if self.cuda_devices else "cpu"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has bfloat16 matrix instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16), from
    /proc/cpuinfo; None where that file does not exist. Without them torch emulates bf16 (slow)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = " ".join(line.split(":", 1)[1] for line in cpuinfo.splitlines()
                     if line.split(":", 1)[0].strip().lower() in ("flags", "features") and ":" in line)
    return bool(re.search(r"(?<!\S)(avx512_bf16|amx_bf16|bf16)(?!\S)", flags))
