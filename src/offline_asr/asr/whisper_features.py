"""Whisper's log-Mel features computed 30 s at a time, so that memory follows the audio's length.

faster-whisper computes the features of a whole file in one go: its short-time Fourier transform
holds every frame (400 floats per 10 ms), then the complex spectrum twice, then its magnitudes.
For an hour of audio that is 3.2 GB on top of the 230 MB of samples. Here the same steps run on
blocks of Whisper's 30-s window and only the result (80 floats per 10 ms, 115 MB an hour) is
kept. Up to one block the arithmetic is faster-whisper's, operation for operation, so the
output is identical; past it, the Mel projection is a matrix product per block instead of one
over the whole file, which can differ in the last bit (as faster-whisper's own result does
between one and two OpenBLAS threads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from faster_whisper.feature_extractor import FeatureExtractor

Features = npt.NDArray[np.float32]

BLOCK_FRAMES = 3000
"""Frames per block: Whisper's 30-s window at 100 frames per second."""


class BlockedFeatureExtractor(FeatureExtractor):  # type: ignore[misc]  # untyped base
    """A drop-in for faster-whisper's `FeatureExtractor` (same arguments, same output)."""

    def __call__(
        self, waveform: npt.NDArray[Any], padding: int = 160, chunk_length: int | None = None
    ) -> Features:
        if chunk_length is not None:
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        samples = np.asarray(waveform, dtype=np.float32)
        # faster-whisper pads `padding` zeros, reflects n_fft / 2 samples at both ends, and
        # drops the last frame.
        length = len(samples) + padding
        frames = length // self.hop_length
        window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)
        out = np.empty((len(self.mel_filters), frames), np.float32)
        for first in range(0, frames, BLOCK_FRAMES):
            last = min(first + BLOCK_FRAMES, frames)
            piece = self._padded(samples, length, first * self.hop_length, last)
            strided = np.lib.stride_tricks.as_strided(
                piece,
                (last - first, self.n_fft),
                (self.hop_length * piece.strides[0], piece.strides[0]),
                writeable=False,
            )
            spectrum = np.fft.rfft(strided * window, n=self.n_fft, axis=-1).astype(np.complex64)
            magnitudes = np.abs(spectrum.T) ** 2
            mel = self.mel_filters @ magnitudes
            np.log10(np.clip(mel, 1e-10, None), out=out[:, first:last])
        np.maximum(out, out.max() - 8.0, out=out)
        out += 4.0
        out /= 4.0
        return out

    def _padded(
        self, samples: npt.NDArray[np.float32], length: int, start: int, last: int
    ) -> npt.NDArray[np.float32]:
        """The padded signal from `start` to the end of frame `last - 1`, as faster-whisper
        builds it (zeros up to `length`, then reflection at both ends); a view inside."""
        half = self.n_fft // 2
        stop = (last - 1) * self.hop_length + self.n_fft
        low, high = start - half, stop - half  # in the unpadded signal
        if low >= 0 and high <= len(samples):
            return samples[low:high]
        index = np.abs(np.arange(low, high))
        index = np.where(index >= length, 2 * (length - 1) - index, index)
        inside = index < len(samples)
        piece = np.zeros(len(index), np.float32)
        piece[inside] = samples[index[inside]]
        return piece
