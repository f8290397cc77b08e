"""Augmentations on whole batches of tensors, on the model's device.

Images are decoded once (see :mod:`holomodal.preprocessing.image`); augmenting a batch
then costs a handful of tensor operations instead of a per-sample PIL pipeline in data
loader workers. Every random parameter is drawn per sample, so the batch behaves as if
each image had been augmented alone.

:class:`ImageAugmentation` covers TIP's image pipelines (spec ``tip_stil.md`` 1.4, 1.7):
colour jitter (in random order, with hue), grey-scale, Gaussian blur, then one resampling for random-resized crop,
horizontal flip and rotation together (reflect padding, as albumentations rotates).
Colour operations act on pixels and geometric ones on positions, so applying the colour
ones first changes nothing but contrast's image mean, taken over the uncropped image.

:func:`marginal_corruption` is SCARF's tabular corruption: chosen cells take the value of
the same column in another row of the batch, drawn among rows where that column is
observed (the batch stands for the split's empirical marginal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from holomodal.errors import ConfigError

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImageAugmentation:
    """Per-sample random augmentation of a float image batch (B, C, H, W) in [0, 1].

    ``rate`` is the probability that a sample is augmented at all (TIP: 0.95 in
    pre-training, 0.8 in fine-tuning); each operation then has its own probability.
    ``blur_kernel`` is the kernel size as a fraction of the image side (TIP: 29 px at
    128 px). The colour jitter is albumentations 1.3.1's ColorJitter as TIP calls it: the
    brightness / contrast / saturation it names, the library's default hue 0.2 (a shift of
    up to a fifth of a turn), the four in random order per sample.
    """

    rate: float = 1.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    rotate: float = 0.0
    rotate_p: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    jitter_p: float = 0.8
    jitter_random_order: bool = True
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: float = 29 / 128

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        draw = _Draw(x.shape[0], x.device, generator)
        # pixels stay fp32 under a bf16 training step: the same augmented images whatever
        # the precision, and no mix of dtypes where jittered rows are written back
        with torch.autocast(x.device.type, enabled=False):
            out = self._colour(x, draw)
            out = self._geometry(out, draw)
        return torch.where(draw.coin(self.rate).view(-1, 1, 1, 1), out, x)

    def _colour(self, x: Tensor, draw: "_Draw") -> Tensor:
        b, c = x.shape[:2]
        per_image = (b, 1, 1, 1)
        if self.jitter_p > 0 and (self.brightness or self.contrast or self.saturation or self.hue):
            x = torch.where(draw.coin(self.jitter_p).view(per_image), self._jitter(x, draw), x)
        if self.gray_p > 0 and c == 3:
            x = torch.where(draw.coin(self.gray_p).view(per_image), grayscale(x).expand_as(x), x)
        if self.blur_p > 0:
            sigma = draw.uniform(*self.blur_sigma)
            kernel = max(3, int(self.blur_kernel * min(x.shape[-2:])) | 1)
            x = torch.where(draw.coin(self.blur_p).view(per_image), gaussian_blur(x, sigma, kernel), x)
        return x

    def _jitter(self, x: Tensor, draw: "_Draw") -> Tensor:
        """Brightness, contrast, saturation and hue, each with its own per-sample factor; in a
        per-sample random order when ``jitter_random_order`` (albumentations' ColorJitter,
        which TIP uses: the order changes the result, since each step clamps to [0, 1])."""
        b, c = x.shape[:2]
        per_image = (b, 1, 1, 1)
        steps = []  # each step(images, rows): the step on ``images``, which are the batch's ``rows`` (indices or a slice)
        if self.brightness:
            factor = draw.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness).view(per_image)
            steps.append(lambda j, rows, f=factor: (j * f[rows]).clamp(0, 1))
        if self.contrast:
            factor = draw.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast).view(per_image)
            steps.append(lambda j, rows, f=factor: _blend(j, grayscale(j).mean(dim=(1, 2, 3), keepdim=True), f[rows]))
        if self.saturation and c == 3:
            factor = draw.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation).view(per_image)
            steps.append(lambda j, rows, f=factor: _blend(j, grayscale(j), f[rows]))
        if self.hue and c == 3:
            shift = draw.uniform(-self.hue, self.hue)
            steps.append(lambda j, rows, s=shift: shift_hue(j, s[rows]))
        if not self.jitter_random_order or len(steps) < 2:
            for step in steps:
                x = step(x, slice(None))  # a view of the factors: no gather in the training step
            return x
        # position k of a row's random permutation names the step it takes k-th; in round k
        # each step runs once, on the rows whose turn it is
        order = torch.stack([draw.rand() for _ in steps], dim=1).argsort(dim=1)
        for k in range(len(steps)):
            out = x.clone()
            for i, step in enumerate(steps):
                rows = torch.nonzero(order[:, k] == i).flatten()
                if len(rows):
                    out[rows] = step(x[rows], rows)
            x = out
        return x

    def _geometry(self, x: Tensor, draw: "_Draw") -> Tensor:
        b = x.shape[0]
        lo, hi = self.crop_scale
        if lo >= 1.0 and self.hflip <= 0 and (self.rotate <= 0 or self.rotate_p <= 0):
            return x
        area = draw.uniform(lo, hi)
        log_ratio = draw.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        ratio = log_ratio.exp()
        # half-extents in normalised coordinates; clamping replaces torchvision's re-draws
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        cx = draw.uniform(-1.0, 1.0) * (1 - width)
        cy = draw.uniform(-1.0, 1.0) * (1 - height)
        flip = torch.where(draw.coin(self.hflip), -1.0, 1.0)
        angle = torch.where(draw.coin(self.rotate_p), draw.uniform(-self.rotate, self.rotate), torch.zeros(b, device=x.device))
        cos, sin = torch.cos(torch.deg2rad(angle)), torch.sin(torch.deg2rad(angle))
        theta = torch.stack([
            torch.stack([cos * width * flip, -sin * height, cx], dim=1),
            torch.stack([sin * width * flip, cos * height, cy], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class _Draw:
    """Per-sample random numbers on the images' device."""

    def __init__(self, n: int, device: torch.device, generator: torch.Generator | None) -> None:
        self.n, self.device, self.generator = n, device, generator

    def rand(self) -> Tensor:
        if self.generator is not None:
            return torch.rand(self.n, generator=self.generator, device=self.generator.device).to(self.device)
        return torch.rand(self.n, device=self.device)

    def uniform(self, low: float, high: float) -> Tensor:
        return low + (high - low) * self.rand()

    def coin(self, p: float) -> Tensor:
        return self.rand() < p


def grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma (ITU-R 601 weights); a one-channel image is its own."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: Tensor, towards: Tensor, factor: Tensor) -> Tensor:
    """``towards + factor * (x - towards)``, clamped: contrast (towards the mean grey) and
    saturation (towards the pixel's grey)."""
    return ((x - towards) * factor + towards).clamp(0, 1)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the chroma of RGB images by ``shift`` turns (per image) in YIQ space: a cheap,
    vectorised stand-in for an HSV hue shift."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = 2 * math.pi * shift.to(x.dtype)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` per image, reflect padding."""
    b, c, h, w = x.shape
    kernel = min(kernel, 2 * (min(h, w) - 1) - 1) | 1  # reflect padding must stay inside the image
    offsets = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    weights = torch.exp(-offsets.square()[None] / (2 * sigma.to(x.dtype).view(-1, 1).square()))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    flat = x.reshape(1, b * c, h, w)
    pad = kernel // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), weights.view(b * c, 1, 1, kernel), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), weights.view(b * c, 1, kernel, 1), groups=b * c)
    return flat.view(b, c, h, w)


# TIP's pipelines: "natural" is the DVM one, "medical" the cardiac one; "_finetune" is the
# fine-tuning variant (crops keep at least 60 % of the image)
PRESETS: dict[str, ImageAugmentation] = {
    "natural": ImageAugmentation(),
    "medical": ImageAugmentation(
        crop_scale=(0.2, 1.0), rotate=45.0, rotate_p=0.5, brightness=0.5, contrast=0.5, saturation=0.5,
        jitter_p=0.5, gray_p=0.0, blur_p=0.0,
    ),
}
PRESETS["natural_finetune"] = replace(PRESETS["natural"], crop_scale=(0.6, 1.0))
PRESETS["medical_finetune"] = replace(PRESETS["medical"], crop_scale=(0.6, 1.0))


def build_image_augmentation(config: str | dict[str, Any] | None) -> ImageAugmentation | None:
    """A preset name, or ``{preset: NAME, **overrides}``; ``None`` / ``"none"`` turns it off."""
    if config is None or config == "none":
        return None
    cfg = {"preset": config} if isinstance(config, str) else dict(config)
    preset = cfg.pop("preset", "natural")
    if preset == "none":
        return None
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}' (known: none, {', '.join(PRESETS)})")
    known = {f.name for f in fields(ImageAugmentation)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown image augmentation option(s) {unknown} (known: {sorted(known)})")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return replace(PRESETS[preset], **cfg)


def choose_cells(n_rows: int, n_columns: int, count: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
    """(B, N) bool with ``count`` columns per row chosen uniformly without replacement."""
    if generator is not None:
        scores = torch.rand(n_rows, n_columns, generator=generator, device=generator.device).to(device)
    else:
        scores = torch.rand(n_rows, n_columns, device=device)
    chosen = torch.zeros(n_rows, n_columns, dtype=torch.bool, device=device)
    return chosen.scatter_(1, scores.argsort(dim=1)[:, :count], True)


def marginal_corruption(
    inputs: dict[str, Tensor], cell_missing: Tensor | None, rate: float, rows: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """SCARF corruption of ``int(N * rate)`` columns per row (TIP: rate 0.3).

    Each chosen cell takes the value of its column in a random row of the batch where
    that column is observed; missing cells stay missing (their values stay zero).
    ``rows`` (B,) bool limits the corruption to some rows. Returns the new tabular inputs
    and the (B, N) mask of cells that were replaced.
    """
    cat, con = inputs["categorical"], inputs["continuous"]
    n_rows, n_cat = con.shape[0], cat.shape[1]
    n_columns = n_cat + con.shape[1]
    device = con.device
    observed = torch.ones(n_rows, n_columns, dtype=torch.bool, device=device) if cell_missing is None else ~cell_missing.bool()
    chosen = choose_cells(n_rows, n_columns, int(n_columns * rate), device, generator)
    weights = observed.T.float()
    has_donor = weights.sum(dim=1) > 0
    weights[~has_donor] = 1.0  # such a column is never replaced, the weights only keep multinomial valid
    if generator is not None:
        donors = torch.multinomial(weights.to(generator.device), n_rows, replacement=True, generator=generator).to(device).T
    else:
        donors = torch.multinomial(weights, n_rows, replacement=True).T
    replaced = chosen & observed & has_donor[None]
    if rows is not None:
        replaced = replaced & rows.view(-1, 1).to(device)
    new_cat = torch.where(replaced[:, :n_cat], cat.gather(0, donors[:, :n_cat]), cat)
    new_con = torch.where(replaced[:, n_cat:], con.gather(0, donors[:, n_cat:]), con)
    return {**inputs, "categorical": new_cat, "continuous": new_con}, replaced
