"""What decoded audio is everywhere: 16 kHz mono float32 samples in [-1, 1].

A leaf: decoding (`asr.audio`) and every engine use this type without importing each other.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 16_000

Audio = npt.NDArray[np.float32]
"""16 kHz mono float32 samples in [-1, 1] (see `offline_asr.asr.audio`)."""
