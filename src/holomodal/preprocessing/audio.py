"""Audio columns: WAV files read with soundfile, turned into fixed-length log-mel spectrograms.

The mel filter bank and framing come from ``transformers.audio_utils`` (no torchaudio,
which would pin another torch). Spectrograms are standardised with the training split's
mean and standard deviation.

``holomodal data cache`` stores each file's spectrogram (before standardisation) in the
file-keyed cache of :mod:`holomodal.preprocessing.image_cache`; rows found there skip the
reading and the STFT. The column option ``cache: false`` ignores the cache.
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
from holomodal.preprocessing.image_cache import CACHE_ENV, ArrayCache, audio_folder, cache_root
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
        self._mel_bank: torch.Tensor | None = None

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
        frame = int(self.sample_rate * self.frame_ms / 1000)
        fft = 1 << (frame - 1).bit_length()
        if self._mel_bank is None:  # kept: building the cache calls this once per chunk of files
            from transformers.audio_utils import mel_filter_bank

            self._mel_bank = torch.from_numpy(mel_filter_bank(
                num_frequency_bins=fft // 2 + 1, num_mel_filters=self.n_mels, min_frequency=0.0,
                max_frequency=self.sample_rate / 2, sampling_rate=self.sample_rate, norm="slaney", mel_scale="slaney",
            )).float()
        mel = self._mel_bank
        spec = torch.stft(waves, n_fft=fft, hop_length=self.hop, win_length=frame, window=torch.hann_window(frame),
                          center=True, return_complex=True).abs().pow(2)
        return torch.log(torch.clamp(mel.T @ spec, min=1e-6))[..., : self.frames]

    # ---- the pre-decoded cache (holomodal data cache) ------------------------------------------
    def _cache_at(self, root: Path) -> ArrayCache:
        folder = audio_folder(self.sample_rate, self.n_mels, self.duration, self.frame_ms, self.hop_ms)
        return ArrayCache(root / folder, (self.n_mels, self.frames), np.float32)

    def _cache(self) -> ArrayCache | None:
        root = cache_root()
        if root is None or self.column.options.get("cache") is False:
            return None
        cache = self._cache_at(root)
        return cache if cache.exists() else None

    def _spectrograms(self, paths: list[Path]) -> list[np.ndarray | None]:
        """(n_mels, frames) of each file, None where it cannot be read: the same batched STFT as
        :meth:`decode` (a row's spectrogram does not depend on the rows batched with it)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            waves = list(pool.map(self._read_checked, [(None, path, path) for path in paths]))
        read = [i for i, (wave, _) in enumerate(waves) if wave is not None]
        out: list[np.ndarray | None] = [None] * len(paths)
        if read:
            specs = self._log_mel(torch.from_numpy(np.stack([waves[i][0] for i in read]))).numpy()
            for j, i in enumerate(read):
                out[i] = specs[j]
        return out

    def build_cache(self, df: pd.DataFrame, progress: Any = None) -> dict[str, int]:
        """Decode this column's files in ``df`` into the cache (those not cached yet)."""
        root = cache_root()
        if root is None:
            raise DataError(f"the audio cache is switched off (${CACHE_ENV}, which holds the image and audio "
                            "caches); set it to a folder to build one")
        values = df[self.column.name].tolist()
        paths = [p for p in resolve_files(self.column, values, df.index.tolist(), self.allow_outside_root) if p is not None]
        return self._cache_at(root).add_batches(paths, self._spectrograms, progress)

    def decode(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values, rows = df[self.column.name].tolist(), df.index.tolist()
        paths = resolve_files(self.column, values, rows, self.allow_outside_root)
        specs = np.zeros((len(values), self.n_mels, self.frames), dtype=np.float32)
        present = np.zeros(len(values), dtype=bool)
        cache = self._cache()
        todo = list(range(len(values))) if cache is None else cache.fill(paths, specs, present)
        if present.any():
            summary.setdefault("cached_audio", {})[self.column.name] = int(present.sum())
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(self._read_checked, [(rows[i], values[i], paths[i]) for i in todo]))
        failures = [err for _, err in results if err]
        if failures and self.on_unreadable == "error":
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise DataError(failures[0] + more + "; set the schema's on_unreadable: missing to treat such files as a missing modality")
        if failures:
            summary.setdefault("unreadable_files", {})[self.column.name] = len(failures)
        if todo:
            # absent and unreadable rows go through the STFT as silence, as they always have
            waves = np.zeros((len(todo), self.n_samples), dtype=np.float32)
            for j, (wave, _) in enumerate(results):
                if wave is not None:
                    waves[j] = wave
                    present[todo[j]] = True
            specs[todo] = self._log_mel(torch.from_numpy(waves)).numpy()
        return torch.from_numpy(specs).unsqueeze(1).contiguous(), torch.from_numpy(present)

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
