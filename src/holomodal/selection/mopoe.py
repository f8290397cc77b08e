"""MoPoE, the mixture-of-products-of-experts multimodal VAE (Sutter et al., ICLR 2021), as
DyMo's frozen recovery model for small images and spectrograms (spec ``dymo.md`` sections 2
and 7, pitfall 8).

Each modality's encoder gives a diagonal Gaussian q_m(z | x_m) over one shared latent. The
posterior of a modality subset S is the product of its members' Gaussians and a standard
normal prior expert (precisions add, means are precision-weighted); the joint posterior is the
uniform mixture over the non-empty subsets of the available modalities. The loss averages, over
those subsets, the negative ELBO of a z drawn from the subset's posterior decoding every
available modality, with ``beta`` weighting each subset's KL to N(0, I).

Recovery decodes the posterior of a sample's observed modalities. The released code always
samples that posterior, so its test results are stochastic (pitfall 8); here the posterior mean
is the default and sampling takes a ``torch.Generator`` for seeded draws.

Images enter as ``pixels / 255`` and leave through a sigmoid (Bernoulli or unit-scale Laplace
likelihood); spectrograms are standardised with the training rows' mean and standard
deviation and scored with a unit-variance Gaussian, then mapped back to the batch's scale.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.selection.dymo import all_subsets
from holomodal.selection.recoverers import RECOVERERS, Recovered, Recoverer

KINDS = {"image": "pixels", "audio": "spectrogram"}
IMAGE_LIKELIHOODS = ("bernoulli", "laplace")
SUBSET_MODES = ("all", "sampled")
CONFIG_FILE = "mopoe.json"
WEIGHTS_FILE = "mopoe.safetensors"
FORMAT_VERSION = 1


def product_of_experts(mu: Tensor, logvar: Tensor, available: Tensor) -> tuple[Tensor, Tensor]:
    """Product of the available experts and a N(0, I) prior expert, per sample.

    mu, logvar (B, M, D); available (B, M) bool. Returns (mu, logvar) (B, D): precision
    T = 1 + sum_m a_m / var_m, mean = sum_m a_m mu_m / var_m / T, variance 1 / T. A row with
    nothing available gets the prior itself."""
    weight = available.to(mu.dtype).unsqueeze(-1)
    precision = torch.exp(-logvar) * weight
    total = 1.0 + precision.sum(dim=1)
    mean = (precision * mu).sum(dim=1) / total
    return mean, -torch.log(total)


def _halved(size: int) -> int:
    # a 3x3 convolution with stride 2 and padding 1
    return (size - 1) // 2 + 1


class _Encoder(nn.Module):
    def __init__(self, channels: int, sizes: list[tuple[int, int]], width: int, latent_dim: int) -> None:
        super().__init__()
        widths = [channels] + [width * 2**i for i in range(len(sizes) - 1)]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        h, w = sizes[-1]
        self.head = nn.Linear(widths[-1] * h * w, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.conv(x).flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class _Decoder(nn.Module):
    def __init__(self, channels: int, sizes: list[tuple[int, int]], width: int, latent_dim: int) -> None:
        super().__init__()
        widths = [channels] + [width * 2**i for i in range(len(sizes) - 1)]
        self.start = (widths[-1], *sizes[-1])
        self.head = nn.Linear(latent_dim, widths[-1] * sizes[-1][0] * sizes[-1][1])
        layers: list[nn.Module] = []
        for level in range(len(sizes) - 1, 0, -1):
            (h, w), (th, tw) = sizes[level], sizes[level - 1]
            # output_padding picks the one of the two sizes a stride-2 layer could have come from
            pad = (th - (2 * h - 1), tw - (2 * w - 1))
            layers.append(nn.ConvTranspose2d(widths[level], widths[level - 1], 3, stride=2, padding=1, output_padding=pad))
            if level > 1:
                layers.append(nn.SiLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(F.silu(self.head(z)).view(-1, *self.start))


def _check_shapes(shapes: dict[str, Any]) -> dict[str, tuple[str, tuple[int, int, int]]]:
    if not shapes:
        raise ConfigError("MoPoE needs at least one modality")
    checked = {}
    for name, spec in shapes.items():
        kind, shape = spec
        if kind not in KINDS:
            raise ConfigError(f"MoPoE modality '{name}': kind '{kind}' is not one of {', '.join(KINDS)}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"MoPoE modality '{name}': shape must be (channels, height, width), got {shape}")
        checked[str(name)] = (kind, shape)
    return checked


class MoPoE(nn.Module):
    """A MoPoE VAE over ``shapes``: ``{name: (kind, (C, H, W))}``, kind ``image`` (read from
    ``inputs[name]['pixels']``, uint8) or ``audio`` (``inputs[name]['spectrogram']``, float).

    Encoders are ``depth`` stride-2 3x3 convolutions (``width``, doubling) and a linear head;
    decoders mirror them back to the exact input size."""

    def __init__(self, shapes: dict[str, tuple[str, Sequence[int]]], latent_dim: int = 32, beta: float = 1.0,
                 width: int = 8, depth: int = 3, image_likelihood: str = "bernoulli") -> None:
        super().__init__()
        if latent_dim < 1 or width < 1 or depth < 1:
            raise ConfigError(f"MoPoE latent_dim, width and depth must be positive, got {latent_dim}, {width}, {depth}")
        if not beta >= 0:
            raise ConfigError(f"MoPoE beta must be non-negative, got {beta}")
        if image_likelihood not in IMAGE_LIKELIHOODS:
            raise ConfigError(f"MoPoE image_likelihood '{image_likelihood}' is not one of {', '.join(IMAGE_LIKELIHOODS)}")
        self.shapes = _check_shapes(shapes)
        self.modalities = tuple(self.shapes)
        self.latent_dim, self.beta, self.width, self.depth = int(latent_dim), float(beta), int(width), int(depth)
        self.image_likelihood = image_likelihood
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for name, (kind, (c, h, w)) in self.shapes.items():
            sizes = [(h, w)]
            for _ in range(depth):
                sizes.append((_halved(sizes[-1][0]), _halved(sizes[-1][1])))
            self.encoders[name] = _Encoder(c, sizes, width, latent_dim)
            self.decoders[name] = _Decoder(c, sizes, width, latent_dim)
        # spectrogram standardisation, set from the training rows by fit_mopoe; saved with the weights
        self.register_buffer("audio_mean", torch.zeros(len(self.modalities)))
        self.register_buffer("audio_std", torch.ones(len(self.modalities)))

    def config(self) -> dict[str, Any]:
        return {"shapes": {m: [k, list(s)] for m, (k, s) in self.shapes.items()}, "latent_dim": self.latent_dim,
                "beta": self.beta, "width": self.width, "depth": self.depth, "image_likelihood": self.image_likelihood}

    # ---- inputs --------------------------------------------------------------------------------

    def _input(self, batch: Batch, index: int) -> Tensor:
        """Modality ``index`` of ``batch`` in the model's units: pixels / 255, standardised spectrograms."""
        name = self.modalities[index]
        kind, shape = self.shapes[name]
        key = KINDS[kind]
        if name not in batch.inputs or key not in batch.inputs[name]:
            raise DataError(f"MoPoE modality '{name}': the batch has no inputs['{name}']['{key}']")
        x = batch.inputs[name][key]
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"MoPoE modality '{name}': expected {key} of shape (B, {', '.join(map(str, shape))}), "
                            f"got {tuple(x.shape)}")
        device = self.audio_mean.device
        if kind == "image":
            return x.to(device).float() / 255.0
        return (x.to(device).float() - self.audio_mean[index]) / self.audio_std[index]

    def _to_batch_units(self, index: int, out: Tensor) -> Tensor:
        """Decoder output (logits or standardised values) -> [0, 1] image or the batch's spectrogram scale."""
        if self.shapes[self.modalities[index]][0] == "image":
            return torch.sigmoid(out)
        return out * self.audio_std[index] + self.audio_mean[index]

    def available(self, batch: Batch) -> Tensor:
        """(B, M) bool: the batch's ``present`` masks in the model's modality order."""
        missing = [m for m in self.modalities if m not in batch.present]
        if missing:
            raise DataError(f"MoPoE: the batch has no presence mask for modalities {missing}")
        device = self.audio_mean.device
        return torch.stack([batch.present[m].to(device).bool() for m in self.modalities], dim=1)

    def _check_available(self, batch: Batch, available: Tensor | None) -> Tensor:
        if available is None:
            return self.available(batch)
        if available.shape != (len(batch), len(self.modalities)):
            raise DataError(f"MoPoE: available mask must be (batch, modalities) = ({len(batch)}, {len(self.modalities)}), "
                            f"got {tuple(available.shape)}")
        return available.to(self.audio_mean.device).bool()

    # ---- posterior, ELBO, generation -----------------------------------------------------------

    def experts(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Every modality's Gaussian expert: (mu, logvar), each (B, M, D). An absent modality's
        expert is computed from its zeroed values; masks decide whether it is used."""
        outs = [self.encoders[m](self._input(batch, i)) for i, m in enumerate(self.modalities)]
        return torch.stack([o[0] for o in outs], dim=1), torch.stack([o[1] for o in outs], dim=1)

    def posterior(self, batch: Batch, available: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mu, logvar) (B, D): per sample, the product of the prior and the experts of the
        modalities ``available`` (B, M) bool marks (default: the batch's ``present``)."""
        available = self._check_available(batch, available)
        mu, logvar = self.experts(batch)
        return product_of_experts(mu, logvar, available)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Every modality decoded from z (B, D), in batch units (images in [0, 1])."""
        return {m: self._to_batch_units(i, self.decoders[m](z)) for i, m in enumerate(self.modalities)}

    def generate(self, batch: Batch, available: Tensor | None = None, sample: bool = False,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Every modality reconstructed from the posterior of the ``available`` ones (default:
        present): images float in [0, 1] (B, C, H, W), spectrograms in the batch's scale. The
        posterior mean is decoded unless ``sample``, which draws z with ``generator``."""
        mu, logvar = self.posterior(batch, available)
        z = mu
        if sample:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * noise
        return self.decode(z)

    def _negative_log_likelihood(self, index: int, out: Tensor, target: Tensor) -> Tensor:
        """(N,) per sample, summed over the modality's elements (constants dropped)."""
        if self.shapes[self.modalities[index]][0] == "image":
            if self.image_likelihood == "bernoulli":
                nll = F.binary_cross_entropy_with_logits(out, target, reduction="none")
            else:
                nll = (torch.sigmoid(out) - target).abs()
        else:
            nll = 0.5 * (out - target) ** 2
        return nll.flatten(1).sum(dim=1)

    def elbo(self, batch: Batch, available: Tensor | None = None, generator: torch.Generator | None = None,
             subsets: str = "all") -> Tensor:
        """The negative ELBO averaged over rows (a loss to minimise).

        Per row: the mean, over the non-empty subsets S of its available modalities, of the
        reconstruction loss of every available modality from z ~ q_S plus ``beta`` times
        KL(q_S || N(0, I)). ``subsets="sampled"`` scores one subset per row, drawn uniformly
        from its valid ones with ``generator``: an unbiased estimate of the same mean at
        1 / (2**M - 1) of the decoding cost. Rows with nothing available are left out."""
        if subsets not in SUBSET_MODES:
            raise ConfigError(f"MoPoE subsets '{subsets}' is not one of {', '.join(SUBSET_MODES)}")
        available = self._check_available(batch, available)
        usable = available.any(dim=1)
        if not usable.any():
            raise DataError("MoPoE ELBO: no row has any of the modalities " + ", ".join(self.modalities))
        mu, logvar = self.experts(batch)
        codes = all_subsets(len(self.modalities)).to(available.device)  # (S, M)
        n, d = mu.shape[0], mu.shape[2]
        # a subset counts for a row only when all its members are available there
        valid = ~(codes[:, None, :] & ~available[None, :, :]).any(dim=2)  # (S, B)
        if subsets == "sampled":
            scores = torch.rand(valid.shape, generator=generator, device=valid.device).masked_fill(~valid, -1.0)
            chosen = scores.argmax(dim=0)
            use = (codes[chosen] & available).unsqueeze(0)  # (1, B, M)
            valid = usable.unsqueeze(0)
        else:
            use = codes[:, None, :] & available[None, :, :]  # (S, B, M)
        n_sub = use.shape[0]
        sub_mu, sub_logvar = product_of_experts(
            mu.unsqueeze(0).expand(n_sub, -1, -1, -1).reshape(n_sub * n, -1, d),
            logvar.unsqueeze(0).expand(n_sub, -1, -1, -1).reshape(n_sub * n, -1, d),
            use.reshape(n_sub * n, -1),
        )
        noise = torch.randn(sub_mu.shape, generator=generator, device=sub_mu.device, dtype=sub_mu.dtype)
        z = sub_mu + torch.exp(0.5 * sub_logvar) * noise
        kl = 0.5 * (sub_mu.pow(2) + sub_logvar.exp() - 1.0 - sub_logvar).sum(dim=1)  # (S*B,)
        loss = self.beta * kl
        for i, m in enumerate(self.modalities):
            target = self._input(batch, i)
            out = self.decoders[m](z)
            nll = self._negative_log_likelihood(i, out, target.repeat(n_sub, *([1] * (target.dim() - 1))))
            loss = loss + nll * available[:, i].repeat(n_sub).to(nll.dtype)
        weight = valid.to(loss.dtype)
        weight = weight / weight.sum(dim=0).clamp_min(1.0)
        per_row = (loss.view(n_sub, n) * weight).sum(dim=0)
        return per_row[usable].mean()


# ---- training ------------------------------------------------------------------------------------


def modality_shapes(batch: Batch, modalities: Sequence[str]) -> dict[str, tuple[str, tuple[int, int, int]]]:
    """``{name: (kind, (C, H, W))}`` of image and audio columns of ``batch``."""
    shapes = {}
    for m in modalities:
        if m not in batch.inputs:
            raise ConfigError(f"MoPoE modality '{m}' is not in the data (modalities: {', '.join(batch.inputs)})")
        kinds = [k for k, key in KINDS.items() if key in batch.inputs[m]]
        if not kinds:
            raise ConfigError(f"MoPoE modality '{m}' is neither an image ('pixels') nor an audio ('spectrogram') column")
        shapes[m] = (kinds[0], tuple(int(s) for s in batch.inputs[m][KINDS[kinds[0]]].shape[1:]))
    return shapes


def generative_modalities(batch: Batch) -> list[str]:
    """The image and audio modalities of ``batch``, in its order."""
    return [m for m, t in batch.inputs.items() if any(key in t for key in KINDS.values())]


def fit_mopoe(train: Batch, modalities: Sequence[str] | None = None, epochs: int = 10, batch_size: int = 64,
              lr: float = 1e-3, seed: int = 0, latent_dim: int = 32, beta: float = 1.0, width: int = 8,
              depth: int = 3, image_likelihood: str = "bernoulli", subsets: str = "sampled",
              device: str | torch.device | None = None) -> MoPoE:
    """A MoPoE trained with Adam on the rows of ``train`` where every one of ``modalities``
    (default: all its image and audio columns) is present; returned frozen, in eval mode.

    ``seed`` fixes the initial weights, the row order and the latent draws without touching
    torch's global random state. ``subsets`` is passed to :meth:`MoPoE.elbo`; one sampled
    subset per row keeps a step as cheap as one decoding of every modality. The mean loss of each epoch is in ``model.epoch_losses``."""
    modalities = list(modalities) if modalities is not None else generative_modalities(train)
    if not modalities:
        raise ConfigError("MoPoE: the data has no image or audio modality to model")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"MoPoE training needs epochs >= 0, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    shapes = modality_shapes(train, modalities)
    missing = [m for m in modalities if m not in train.present]
    if missing:
        raise DataError(f"MoPoE: the training batch has no presence mask for modalities {missing}")
    complete = torch.stack([train.present[m].bool().cpu() for m in modalities], dim=1).all(dim=1)
    if not complete.any():
        raise DataError(f"MoPoE: no training row holds all of the modalities {', '.join(modalities)}")
    rows = torch.nonzero(complete).flatten()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MoPoE(shapes, latent_dim=latent_dim, beta=beta, width=width, depth=depth,
                      image_likelihood=image_likelihood)
    for i, m in enumerate(modalities):
        if shapes[m][0] == "audio":
            seen = train.inputs[m]["spectrogram"][rows].float()
            model.audio_mean[i] = seen.mean()
            model.audio_std[i] = seen.std().clamp_min(1e-6) if seen.numel() > 1 else 1.0
    device = torch.device(device) if device is not None else torch.device("cpu")
    model.to(device)
    order = torch.Generator().manual_seed(seed)
    draws = torch.Generator(device=device).manual_seed(seed + 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.epoch_losses = []
    model.train()
    for _ in range(epochs):
        shuffled = rows[torch.randperm(len(rows), generator=order)]
        total, count = 0.0, 0
        for start in range(0, len(shuffled), batch_size):
            part = train.select(shuffled[start:start + batch_size]).to(device)
            loss = model.elbo(part, generator=draws, subsets=subsets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(part)
            count += len(part)
        model.epoch_losses.append(total / count)
    model.eval()
    model.requires_grad_(False)
    return model


# ---- the recoverer -------------------------------------------------------------------------------


class MoPoERecoverer(Recoverer):
    """Fills absent image and audio modalities with MoPoE generations conditioned on each
    row's observed ones. Observed inputs are returned untouched; a row that observes none of
    the MoPoE's modalities gets nothing recovered. Training options go to :func:`fit_mopoe`."""

    def __init__(self, modalities: Sequence[str] | None = None, *, epochs: int = 10, batch_size: int = 64,
                 lr: float = 1e-3, seed: int = 0, latent_dim: int = 32, beta: float = 1.0, width: int = 8,
                 depth: int = 3, image_likelihood: str = "bernoulli", subsets: str = "sampled", sample: bool = False,
                 chunk_size: int = 256, device: str | None = None, model: MoPoE | None = None) -> None:
        self.modalities = tuple(modalities) if modalities is not None else None
        self.options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "latent_dim": latent_dim,
                        "beta": beta, "width": width, "depth": depth, "image_likelihood": image_likelihood,
                        "subsets": subsets}
        self.sample = bool(sample)
        self.chunk_size = int(chunk_size)
        self.device = device
        self.model = model
        if model is not None:
            self.modalities = model.modalities

    def fit(self, train: Batch) -> "MoPoERecoverer":
        self.model = fit_mopoe(train, self.modalities, device=self.device, **self.options)
        self.modalities = self.model.modalities
        return self

    def _fitted(self) -> MoPoE:
        if self.model is None:
            raise ConfigError("MoPoERecoverer: call fit(train) (or load a saved one) before recover")
        return self.model

    def recover(self, batch: Batch, generator: torch.Generator | None = None) -> Recovered:
        """``batch`` with every absent MoPoE modality decoded from the row's observed ones;
        ``generator`` seeds the draws when the recoverer samples."""
        model = self._fitted()
        device = model.audio_mean.device
        available = model.available(batch).cpu()
        fill = ~available & available.any(dim=1, keepdim=True)  # (B, M)
        inputs = {m: dict(t) for m, t in batch.inputs.items()}
        recovered = {m: torch.zeros(len(batch), dtype=torch.bool, device=p.device) for m, p in batch.present.items()}
        rows = torch.nonzero(fill.any(dim=1)).flatten()
        if len(rows):
            generated: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
            with torch.no_grad():
                for start in range(0, len(rows), self.chunk_size):
                    part = batch.select(rows[start:start + self.chunk_size].to(next(iter(batch.present.values())).device))
                    out = model.generate(part, available[rows[start:start + self.chunk_size]].to(device),
                                         sample=self.sample, generator=generator)
                    for m in model.modalities:
                        generated[m].append(out[m])
            for i, m in enumerate(model.modalities):
                kind, _ = model.shapes[m]
                key = KINDS[kind]
                original = batch.inputs[m][key]
                values = torch.cat(generated[m])
                if kind == "image":
                    values = (values * 255.0).round().clamp(0, 255)
                values = values.to(device=original.device, dtype=original.dtype)
                where = fill[rows, i].to(original.device)
                filled = original.clone()
                target_rows = rows.to(original.device)[where]
                filled[target_rows] = values[where]
                inputs[m][key] = filled
                recovered[m] = fill[:, i].to(batch.present[m].device)
        return Recovered(batch=replace(batch, inputs=inputs), recovered=recovered, cells=None)

    # ---- saving --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path/mopoe.safetensors`` (weights) and ``path/mopoe.json`` (configuration)."""
        from safetensors.torch import save_file

        model = self._fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        record = {"format": FORMAT_VERSION, "model": model.config(), "options": self.options, "sample": self.sample,
                  "chunk_size": self.chunk_size, "epoch_losses": list(getattr(model, "epoch_losses", []))}
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "MoPoERecoverer":
        from holomodal.safe_load import DamagedFileError, load_safetensors, read_json, require_keys

        folder = Path(path)
        record = read_json(folder / CONFIG_FILE, "MoPoE configuration")
        require_keys(folder / CONFIG_FILE, record, ["format", "model", "options"])
        if record["format"] != FORMAT_VERSION:
            raise DamagedFileError(folder / CONFIG_FILE, f"format {record['format']} is not {FORMAT_VERSION}")
        config = dict(record["model"])
        try:
            config["shapes"] = {m: (k, tuple(s)) for m, (k, s) in config["shapes"].items()}
            model = MoPoE(**config)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedFileError(folder / CONFIG_FILE, f"not a MoPoE configuration: {exc}") from None
        state = load_safetensors(folder / WEIGHTS_FILE, "MoPoE weights file")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise DamagedFileError(folder / WEIGHTS_FILE, f"weights do not fit the configuration: {exc}") from None
        model.epoch_losses = list(record.get("epoch_losses", []))
        model.eval().requires_grad_(False)
        if device is not None:
            model.to(device)
        return cls(sample=bool(record.get("sample", False)), chunk_size=int(record.get("chunk_size", 256)),
                   device=device, model=model, **record["options"])


RECOVERERS["mopoe"] = MoPoERecoverer
