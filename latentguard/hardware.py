"""What the machine computes natively, and the training precision that follows from it.

bfloat16 autocast makes training faster only where bfloat16 matrix products run in hardware: on
CUDA GPUs that support it, and on CPUs with AMX or AVX512-BF16. Elsewhere PyTorch emulates them
(oneDNN converts to float32 and back), which measured about 4.5x *slower* than plain float32 on a
2-core AVX-512 CPU without bf16 (``benchmarks/organism.py`` prints the ratio on the machine at
hand). :func:`training_precision` makes that decision at run time and says why.

Example:
    >>> from latentguard.hardware import choose_bf16
    >>> choose_bf16("cpu", {"avx512f", "avx512_bf16"}).bf16
    True
    >>> choose_bf16("cpu", {"avx512f", "avx2"}).bf16
    False
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: CPU flags (``/proc/cpuinfo``) that mean bfloat16 matrix products run in hardware.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")

#: ``ONEDNN_MAX_CPU_ISA`` values that cap oneDNN below its bfloat16 kernels.
ONEDNN_ISAS_WITHOUT_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)


@dataclass(frozen=True)
class PrecisionChoice:
    """Whether to train under bfloat16 autocast, and why.

    Attributes:
        bf16: Use bfloat16 autocast.
        reason: One line naming what decided it (the flag found, the device, or an override).
    """

    bf16: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on ARM); empty where unreadable."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def choose_bf16(
    device_type: str,
    flags: Iterable[str] = (),
    *,
    onednn_max_isa: str | None = None,
    cuda_bf16: bool = False,
) -> PrecisionChoice:
    """Decide bfloat16 autocast from the device and the CPU flags (a pure function).

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ``"mps"``...
        flags: CPU feature flags, as :func:`cpu_flags` returns them.
        onednn_max_isa: The ``ONEDNN_MAX_CPU_ISA`` cap in force, if any.
        cuda_bf16: Whether the CUDA device supports bfloat16 (``torch.cuda.is_bf16_supported()``).

    Returns:
        The choice with its reason.
    """
    if device_type == "cuda":
        if cuda_bf16:
            return PrecisionChoice(True, "CUDA device with bfloat16 support")
        return PrecisionChoice(False, "CUDA device without bfloat16 support: float32")
    if device_type != "cpu":
        return PrecisionChoice(False, f"{device_type} device: float32")
    cap = (onednn_max_isa or "").strip().upper()
    if cap in ONEDNN_ISAS_WITHOUT_BF16:
        return PrecisionChoice(
            False, f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below its bfloat16 kernels: float32"
        )
    found = [f for f in BF16_CPU_FLAGS if f in set(flags)]
    if found:
        return PrecisionChoice(True, f"CPU has native bfloat16 ({', '.join(found)})")
    return PrecisionChoice(
        False, "CPU has neither AMX nor AVX512-BF16: bfloat16 would be emulated (slower), float32"
    )


def training_precision(device: str | torch.device = "cpu", override: bool | None = None) -> PrecisionChoice:
    """The precision to train in on ``device`` here: ``override`` if given, else :func:`choose_bf16`.

    Args:
        device: The device training runs on.
        override: ``True``/``False`` forces bfloat16 autocast on or off (``--bf16``/``--no-bf16``).
    """
    if override is not None:
        return PrecisionChoice(bool(override), f"set by the caller (bf16={bool(override)})")
    device_type = torch.device(device).type
    cuda_bf16 = bool(device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return choose_bf16(
        device_type,
        cpu_flags() if platform.system() == "Linux" else (),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        cuda_bf16=cuda_bf16,
    )
