"""The official FSD50K front end in NumPy (no torchaudio or librosa needed): mel filterbank, power
spectrogram, log-mel feature and SpecAugment."""

from __future__ import annotations

import functools

import numpy as np


FSD_RATE, FSD_MELS, FSD_FRAMES = 22050, 96, 101
FSD_N_FFT, FSD_WIN, FSD_HOP = 96 * 20, int(FSD_RATE * 0.03), int(FSD_RATE * 0.01)  # the official mel front end


def mel_filterbank(sample_rate: int = FSD_RATE, n_fft: int = FSD_N_FFT, n_mels: int = FSD_MELS) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular HTK-mel filters from 0 Hz to sample_rate // 2, unnormalised (torchaudio's
    MelSpectrogram defaults)."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    frequencies = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = 700.0 * (10 ** (np.linspace(to_mel(0.0), to_mel(sample_rate // 2), n_mels + 2) / 2595.0) - 1.0)
    slopes = edges[None, :] - frequencies[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    return np.maximum(0.0, np.minimum(down, up))


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """[n_fft // 2 + 1, frames] |STFT|^2 as torch.stft computes it for torchaudio: centred frames (reflect
    padding), a periodic Hann window of FSD_WIN samples zero-padded to n_fft in the middle."""
    window = np.zeros(FSD_N_FFT)
    left = (FSD_N_FFT - FSD_WIN) // 2
    window[left : left + FSD_WIN] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FSD_WIN) / FSD_WIN)
    padded = np.pad(np.asarray(audio, np.float64), FSD_N_FFT // 2, mode="reflect")
    frames = 1 + (len(padded) - FSD_N_FFT) // FSD_HOP
    index = np.arange(frames)[:, None] * FSD_HOP + np.arange(FSD_N_FFT)
    return (np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2).T


@functools.cache
def _filterbank() -> np.ndarray:
    return mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """The official FSD50K feature of one clip: mel power spectrogram -> dB (librosa's power_to_db: floor 1e-10,
    80 dB below the peak) + 75, minus its mean. float32 [96, frames]."""
    mel = _filterbank().T @ power_spectrogram(audio)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0) + 75.0
    return (db - db.mean()).astype(np.float32)


def spec_augment(spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official SpecAugment: 1-2 masks, each a band of up to 15 % of the mel bins and one of up to 20 % of the
    frames, set to the spectrogram's minimum."""
    spec, value = spec.copy(), spec.min()
    mels, frames = spec.shape
    for _ in range(rng.integers(1, 3)):
        width = int(rng.uniform(0.0, 0.15) * mels)
        start = int(rng.uniform(0.0, mels - width))
        spec[start : start + width] = value
        width = int(rng.uniform(0.0, 0.20) * frames)
        start = int(rng.uniform(0.0, frames - width))
        spec[:, start : start + width] = value
    return spec
