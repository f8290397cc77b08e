"""Audio columns: WAV files read with soundfile, turned into fixed-length log-mel spectrograms.

The mel filter bank and framing come from ``transformers.audio_utils`` (no torchaudio,
which would pin another torch). Spectrograms are standardised with the training split's
mean and standard deviation.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.errors import DataError
from holomodal.preprocessing.files import UnreadableFile, open_regular, resolve_files
from holomodal.schema import Column


class AudioProcessor:
    """An audio column: cells name WAV (or other soundfile) files, resolved and checked as in
    :mod:`holomodal.preprocessing.files` (``root``, ``allow_outside_root``, regular files only)."""

    def __init__(self, column: Column, on_unreadable: str = "error", allow_outside_root: bool = False) -> None:
        opts = column.options
        self.column = column
        self.sample_rate = int(opts.get("sample_rate", 16000))
        self.n_mels = int(opts.get("n_mels", 40))
        self.duration = float(opts.get("duration", 1.0))
        self.frame_ms = float(opts.get("frame_ms", 25.0))
        self.hop_ms = float(opts.get("hop_ms", 10.0))
        self.on_unreadable = on_unreadable
        self.allow_outside_root = allow_outside_root
        self.mean_, self.std_ = 0.0, 1.0

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.duration))

    @property
    def hop(self) -> int:
        return int(self.sample_rate * self.hop_ms / 1000)

    @property
    def frames(self) -> int:
        return 1 + self.n_samples // self.hop

    def _read_wave(self, path: Path) -> np.ndarray:
        """Mono float waveform at the column's sample rate, centre-cropped or zero-padded."""
        import soundfile as sf
        from scipy.signal import resample_poly

        with open_regular(path) as fh:
            wave, rate = sf.read(fh, dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        if rate != self.sample_rate:
            g = gcd(int(rate), self.sample_rate)
            wave = resample_poly(wave, self.sample_rate // g, int(rate) // g).astype(np.float32)
        if len(wave) > self.n_samples:
            start = (len(wave) - self.n_samples) // 2
            wave = wave[start : start + self.n_samples]
        return np.pad(wave, (0, self.n_samples - len(wave)))

    def _read_checked(self, item: tuple[Any, Any, Path | None]) -> tuple[np.ndarray | None, str | None]:
        row, value, path = item
        if path is None:
            return None, None
        try:
            return self._read_wave(path), None
        except UnreadableFile as exc:
            reason = str(exc)
        except Exception as exc:  # soundfile raises several types for broken files
            reason = f"{exc.__class__.__name__}: {exc}"
        return None, f"row {row}: cannot read audio '{value}' in column '{self.column.name}' ({reason})"

    def _log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """(N, samples) -> (N, n_mels, frames): one batched STFT for the whole split."""
        from transformers.audio_utils import mel_filter_bank

        frame = int(self.sample_rate * self.frame_ms / 1000)
        fft = 1 << (frame - 1).bit_length()
        mel = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=fft // 2 + 1, num_mel_filters=self.n_mels, min_frequency=0.0,
            max_frequency=self.sample_rate / 2, sampling_rate=self.sample_rate, norm="slaney", mel_scale="slaney",
        )).float()
        spec = torch.stft(waves, n_fft=fft, hop_length=self.hop, win_length=frame, window=torch.hann_window(frame),
                          center=True, return_complex=True).abs().pow(2)
        return torch.log(torch.clamp(mel.T @ spec, min=1e-6))[..., : self.frames]

    def decode(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values, rows = df[self.column.name].tolist(), df.index.tolist()
        paths = resolve_files(self.column, values, rows, self.allow_outside_root)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(self._read_checked, zip(rows, values, paths)))
        failures = [err for _, err in results if err]
        if failures and self.on_unreadable == "error":
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise DataError(failures[0] + more + "; set the schema's on_unreadable: missing to treat such files as a missing modality")
        if failures:
            summary.setdefault("unreadable_files", {})[self.column.name] = len(failures)
        present = np.array([wave is not None for wave, _ in results], dtype=bool)
        waves = np.zeros((len(results), self.n_samples), dtype=np.float32)
        for i, (wave, _) in enumerate(results):
            if wave is not None:
                waves[i] = wave
        specs = self._log_mel(torch.from_numpy(waves)) if len(waves) else torch.zeros(0, self.n_mels, self.frames)
        return specs.unsqueeze(1).contiguous(), torch.from_numpy(present)

    def fit(self, df: pd.DataFrame) -> "AudioProcessor":
        specs, present = self.decode(df, {})
        if present.any():
            seen = specs[present]
            self.mean_, self.std_ = float(seen.mean()), float(seen.std().clamp_min(1e-6))
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        specs, present = self.decode(df, summary)
        return {"spectrogram": (specs - self.mean_) / self.std_}, present

    def spec(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "frames": self.frames}

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean_, self.std_ = state["mean"], state["std"]
