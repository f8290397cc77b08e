"""TIP's image augmentation: albumentations' ColorJitter as TIP calls it (hue 0.2 by the
library's default, the four operations in random order per sample)."""

import pytest
import torch

from holomodal.augment import PRESETS, ImageAugmentation, grayscale

# colour jitter alone: no crop, flip, rotation, grey-scale or blur, every sample jittered
JITTER_ONLY = dict(rate=1.0, crop_scale=(1.0, 1.0), hflip=0.0, rotate=0.0, gray_p=0.0, blur_p=0.0, jitter_p=1.0)


@pytest.mark.parametrize("name", ["natural", "natural_finetune", "medical", "medical_finetune"])
def test_tip_presets_jitter_hue_in_random_order(name):
    preset = PRESETS[name]
    assert preset.hue == pytest.approx(0.2) and preset.jitter_random_order
    expected = (0.8, 0.8) if name.startswith("natural") else (0.5, 0.5)  # (strength, probability)
    assert (preset.brightness, preset.contrast, preset.saturation, preset.jitter_p) == (*expected[:1] * 3, expected[1])


def test_order_of_the_jitter_operations_is_drawn_per_sample():
    # brightness and contrast commute but for clamping at 1, so bright images show the order
    images = 0.5 + 0.5 * torch.rand(400, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    options = dict(JITTER_ONLY, brightness=0.8, contrast=0.8, saturation=0.0, hue=0.0)
    fixed = ImageAugmentation(**options, jitter_random_order=False)(images, torch.Generator().manual_seed(0))
    shuffled = ImageAugmentation(**options)(images, torch.Generator().manual_seed(0))
    # the factors are drawn before the order, so rows whose drawn order is the fixed one agree
    same = (fixed - shuffled).abs().flatten(1).amax(dim=1) < 1e-6
    assert 0.35 < same.float().mean() < 0.65
    reverse = _contrast_then_brightness(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shuffled[~same], reverse[~same])


def _contrast_then_brightness(images, generator):
    """The two steps the other way round, with the factors drawn as the augmentation draws
    them (the jitter coin first, then brightness, then contrast)."""
    n = len(images)
    torch.rand(n, generator=generator)
    brightness = (0.2 + 1.6 * torch.rand(n, generator=generator)).view(-1, 1, 1, 1)
    contrast = (0.2 + 1.6 * torch.rand(n, generator=generator)).view(-1, 1, 1, 1)
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    x = ((images - mean) * contrast + mean).clamp(0, 1)
    return (x * brightness).clamp(0, 1)


def test_hue_shift_turns_colours_and_keeps_grey_and_luma():
    # muted colours, whose turned chroma stays inside the RGB cube (no clamping)
    colours = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.3 + 0.35
    hue_only = ImageAugmentation(**JITTER_ONLY, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.2)
    turned = hue_only(colours, torch.Generator().manual_seed(0))
    assert (turned - colours).abs().amax() > 0.01
    torch.testing.assert_close(grayscale(turned), grayscale(colours), atol=1e-4, rtol=0)
    grey = colours[:, :1].expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(hue_only(grey, torch.Generator().manual_seed(0)), grey, atol=1e-5, rtol=0)


def test_a_bf16_training_step_augments_real_images_exactly_as_fp32_does():
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from holomodal.data.paths import resolve_data_root

    files = sorted((resolve_data_root(dataset="emoji") / "emoji" / "google").glob("*.png"))[:16]
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files]))
    images = images.permute(0, 3, 1, 2).contiguous()
    augment = PRESETS["natural"]
    plain = augment(images, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = augment(images, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)
