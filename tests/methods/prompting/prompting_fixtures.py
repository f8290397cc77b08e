"""Shared pieces of the prompt-method tests: a tiny-CLIP context and a batch of each missing case."""

import torch

from holomodal.backbones.clip import CLIP_MEAN, CLIP_STD
from holomodal.batch import Batch
from holomodal.methods.base import ModelContext


def tiny_context(num_classes=4, task="multiclass", size=64):
    specs = {"picture": {"channels": 3, "size": size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
             "name": {"tokenizer": "clip", "max_length": 77, "vocab_size": 49408, "pad_id": 0}}
    return ModelContext(specs, {"picture": "image", "name": "text"}, num_classes, task)


def case_batch(n_per_case=2, seed=0):
    """Rows of the three missing cases in turn (complete, missing text, missing image) and one
    row missing both, with the batch contract's zeroed absent inputs."""
    g = torch.Generator().manual_seed(seed)
    n = 3 * n_per_case + 1
    pixels = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
    ids = torch.zeros(n, 77, dtype=torch.long)
    ids[:, 0], ids[:, 1:5], ids[:, 5] = 49406, torch.randint(300, 40000, (n, 4), generator=g), 49407
    case = torch.tensor([0, 1, 2] * n_per_case + [3])
    image_present, text_present = ~((case == 2) | (case == 3)), ~((case == 1) | (case == 3))
    pixels[~image_present] = 0
    ids[~text_present] = 0
    return Batch(inputs={"picture": {"pixels": pixels}, "name": {"input_ids": ids, "attention_mask": (ids != 0).long()}},
                 present={"picture": image_present, "name": text_present}, target=torch.arange(n) % 4)


def capture_block_inputs(blocks):
    """Forward pre-hooks recording every block's input tokens and attention mask."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0].detach().clone(), kwargs.get("attn_mask")))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks]
    return seen, handles
