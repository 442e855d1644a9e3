"""Which device an engine runs on (the CPU pins are in `asr.pins`; the check of the weights
before a load is `registry.integrity.check_before_load`)."""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda"]


def choose_device(requested: Device, engine: str) -> Literal["cpu", "cuda"]:
    """CUDA when asked or when the engine's runtime sees a GPU (auto), else CPU."""
    if requested != "auto":
        return requested
    if engine == "whisper":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
