"""Training throughput at DVM's shapes: holomodal's step against the seeds' way of training.

For each workload (TIP pre-training, TIP full fine-tuning, late fusion; ResNet-50 at 128 px,
17 table features: 4 categorical with DVM's cardinalities and 13 continuous, 286 classes,
batch 256) one run measures

  (a) ours: the method's Lightning training step fed by holomodal's input pipeline (images
      decoded once to uint8, batches gathered by one index per tensor, pinned, augmented
      on the device), precision ``auto`` (bf16-mixed where supported), channels_last,
      fused Adam, optionally ``--compile``;
  (b) reference: the same model and losses in plain fp32 eager PyTorch, fed the seeds' way:
      a Dataset that loads each sample's image file (``.npy``, as TIP's DVM loader) and
      augments it alone with torchvision, corrupts the table row in Python, default
      collation, DataLoader workers;
  (c) the timm image model alone, forward + backward + optimiser step on device tensors at
      the same batch size and precision (the bound for any model built on it);
  (d) the input pipeline alone: (a)'s batches moved to the device and augmented, no model;

plus peak GPU memory. Samples are synthetic (random images written as JPEG and ``.npy``,
random table cells with 10 % missing) because only shapes matter here.

    python benchmarks/throughput.py                      # GPU, the full table
    python benchmarks/throughput.py --quick              # tiny shapes, any machine (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

DVM_CATEGORICAL = {"Color": 22, "Bodytype": 13, "Gearbox": 3, "Fuel_type": 12}
DVM_CONTINUOUS = ["Wheelbase", "Height", "Width", "Length", "Adv_year", "Adv_month", "Reg_year", "Runned_Miles",
                  "Price", "Seat_num", "Door_num", "Entry_price", "Engine_size"]
DVM_CLASSES = 286
WORKLOADS = ("tip_pretrain", "tip_finetune", "late_fusion")
# TIP's device-side image augmentation per workload (late fusion trains on the images as they are)
AUGMENT = {"tip_pretrain": {"preset": "natural", "rate": 0.95}, "tip_finetune": {"preset": "natural_finetune", "rate": 0.8}}
QUICK = {"image_model": "test_resnet", "image_size": 32, "batch_size": 8, "rows": 48, "steps": 3, "warmup": 1,
         "dim": 16, "depth": 1, "heads": 2, "reference_workers": 0}


# ---- synthetic DVM-shaped data ---------------------------------------------------------------
def write_data(folder: Path, rows: int, size: int, seed: int = 0) -> tuple[Any, pd.DataFrame]:
    """A schema and table with an image column (JPEG paths) and, beside each JPEG, the
    same image as ``.npy`` for the reference loader."""
    from PIL import Image

    from holomodal.schema import Column, Modality, Schema

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(rows):
        # smooth random colour fields compress like photographs, unlike white noise
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
        Image.fromarray(arr).save(images / f"{i}.jpg", quality=90)
        np.save(images / f"{i}.npy", arr)
        paths.append(f"{i}.jpg")
    frame = pd.DataFrame({"image": paths})
    for name, k in DVM_CATEGORICAL.items():
        frame[name] = [f"{name}_{v}" for v in rng.integers(0, k, rows)]
    for name in DVM_CONTINUOUS:
        frame[name] = rng.normal(size=rows)
    table = list(DVM_CATEGORICAL) + DVM_CONTINUOUS
    holes = rng.random((rows, len(table))) < 0.1
    for j, name in enumerate(table):
        frame.loc[holes[:, j], name] = np.nan
    frame["label"] = [f"model_{v}" for v in rng.integers(0, DVM_CLASSES, rows)]
    columns = [Column("image", Modality.IMAGE, {"root": str(images), "channels": 3, "size": size, "normalize": "none"})]
    columns += [Column(n, Modality.CATEGORICAL) for n in DVM_CATEGORICAL]
    columns += [Column(n, Modality.CONTINUOUS) for n in DVM_CONTINUOUS]
    columns.append(Column("label", Modality.LABEL, {"task": "multiclass", "classes": [f"model_{v}" for v in range(DVM_CLASSES)]}))
    return Schema(columns), frame


# ---- the models ------------------------------------------------------------------------------
def build_module(workload: str, pre: Any, schema: Any, args: argparse.Namespace, *, ours: bool) -> Any:
    from holomodal.methods import ModelContext, create_method
    from holomodal.methods.tip import TIPPretraining

    image = {"name": "timm", "model_name": args.image_model, "normalize": False, "channels_last": ours}
    tabular = {"name": "tabular_transformer", "dim": args.dim, "depth": args.depth, "heads": args.heads}
    interaction = {"dim": args.dim, "depth": args.depth, "heads": args.heads}
    types = {m: "tabular" if m == "tabular" else schema.modality_type(m).value for m in pre.processors}
    optim = {"name": "adam", "lr": 3e-4, "weight_decay": 1.5e-6}
    if workload == "tip_pretrain":
        model = {"encoders": {"image": image, "tabular": tabular}, "interaction": interaction,
                 "augment": AUGMENT[workload]}
        return TIPPretraining(pre.input_specs, types, model=model, optim=optim)
    context = ModelContext(pre.input_specs, types, pre.num_classes, "multiclass", list(pre.classes_))
    if workload == "tip_finetune":
        return create_method("tip", context, finetune="full", encoders={"image": image, "tabular": tabular},
                             interaction=interaction, finetune_augment=AUGMENT[workload], optim=optim)
    return create_method("late_fusion", context, encoders={"image": image, "tabular": tabular}, optim=optim)


def reference_loss(workload: str, module: Any, batch: Any) -> torch.Tensor:
    """The loss of one batch with every augmentation already done per sample."""
    if workload == "tip_pretrain":
        return module.ssl_losses(batch, augment=True)["loss"]
    return module.loss_from_logits(module(batch), batch.target)


def strip_device_augmentation(workload: str, module: Any) -> None:
    """The reference augments in its Dataset, so the module must not augment again."""
    module.augment = None
    module.corruption_rate = 0.0
    if workload == "tip_finetune":
        module.augment_rate = 0.0


# ---- (b) the seeds' way: per-sample loading and augmentation ----------------------------------
class PerSampleDataset(torch.utils.data.Dataset):
    """One sample at a time: read the image file, augment it alone, corrupt the row in Python."""

    def __init__(self, batch: Any, folder: Path, workload: str, image: str, size: int) -> None:
        from torchvision.transforms import v2

        self.files = [folder / "images" / f"{int(r)}.npy" for r in batch.row]
        self.categorical = batch.inputs["tabular"]["categorical"].numpy()
        self.continuous = batch.inputs["tabular"]["continuous"].numpy()
        self.missing = batch.cell_missing.numpy()
        self.target = batch.target.numpy()
        self.image = image
        if workload == "late_fusion":
            self.rate, self.corrupt = 0.0, 0.0
            self.augment = None
        else:
            pretrain = workload == "tip_pretrain"
            self.rate = AUGMENT[workload]["rate"]
            self.corrupt = 0.3
            self.augment = v2.Compose([
                v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(29, sigma=(0.1, 2.0))], p=0.5),
                v2.RandomResizedCrop(size, scale=(0.08, 1.0) if pretrain else (0.6, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels = torch.from_numpy(np.load(self.files[i])).permute(2, 0, 1).contiguous()
        cat, con = self.categorical[i].copy(), self.continuous[i].copy()
        if self.augment is not None and np.random.random() < self.rate:
            pixels = self.augment(pixels)
            # SCARF: a random subset of columns takes the values of random other rows
            n_cat, n = cat.shape[0], cat.shape[0] + con.shape[0]
            for j in np.random.choice(n, int(n * self.corrupt), replace=False):
                donor = np.random.randint(len(self.files))
                if j < n_cat:
                    cat[j] = self.categorical[donor, j]
                else:
                    con[j - n_cat] = self.continuous[donor, j - n_cat]
        return {"pixels": pixels.float() / 255.0, "categorical": torch.from_numpy(cat), "continuous": torch.from_numpy(con),
                "missing": torch.from_numpy(self.missing[i]), "target": int(self.target[i])}


def as_batch(sample: dict[str, torch.Tensor], image: str) -> Any:
    from holomodal.batch import Batch

    n = sample["target"].shape[0]
    ones = torch.ones(n, dtype=torch.bool)
    return Batch(
        inputs={image: {"pixels": sample["pixels"]},
                "tabular": {"categorical": sample["categorical"], "continuous": sample["continuous"]}},
        present={image: ones, "tabular": ones}, cell_missing=sample["missing"], target=sample["target"],
    )


# ---- timing helpers ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class StepTimer(L.Callback):
    """Times optimiser steps ``warmup`` .. the end of training, synchronising only at the two ends."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.first = 0
        self.steps = 0
        self.seconds = float("nan")

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self.start is None and trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
            self.first = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.first


# ---- the four measurements ----------------------------------------------------------------------
def measure_ours(workload: str, train: Any, pre: Any, schema: Any, args: argparse.Namespace, device: torch.device) -> dict:
    from holomodal.compilation import compile_callbacks
    from holomodal.training import auto_precision
    from holomodal.loading import make_loader

    module = build_module(workload, pre, schema, args, ours=True)
    timer = StepTimer(args.warmup, device)
    precision = auto_precision() if args.precision == "auto" else args.precision
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=args.warmup + args.steps, max_epochs=-1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[timer, *compile_callbacks(args.compile)],
    )
    reset_memory(device)
    trainer.fit(module, make_loader(train, args.batch_size, shuffle=True, drop_last=True))
    return {"samples_per_s": timer.steps * args.batch_size / timer.seconds, "peak_gib": peak_gib(device),
            "precision": precision, "steps": timer.steps}


def measure_reference(workload: str, train: Any, pre: Any, schema: Any, args: argparse.Namespace, device: torch.device,
                      folder: Path) -> dict:
    image = next(m for m in pre.processors if m != "tabular")
    torch.manual_seed(0)
    module = build_module(workload, pre, schema, args, ours=False).to(device).train()
    strip_device_augmentation(workload, module)
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-4, weight_decay=1.5e-6)
    dataset = PerSampleDataset(train, folder, workload, image, args.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.reference_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.reference_workers > 0)
    reset_memory(device)
    done, start = 0, None
    while done < args.warmup + args.steps:
        for sample in loader:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            batch = as_batch(sample, image).to(device)
            loss = reference_loss(workload, module, batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            done += 1
            if done == args.warmup + args.steps:
                break
    sync(device)
    return {"samples_per_s": args.steps * args.batch_size / (time.perf_counter() - start), "peak_gib": peak_gib(device)}


def measure_image_model(args: argparse.Namespace, device: torch.device) -> dict:
    import timm

    from holomodal.training import auto_precision

    model = timm.create_model(args.image_model, num_classes=0).to(device).to(memory_format=torch.channels_last).train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-4, **fused)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=torch.channels_last)
    precision = auto_precision() if args.precision == "auto" else args.precision
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    reset_memory(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    sync(device)
    return {"samples_per_s": args.steps * args.batch_size / (time.perf_counter() - start), "peak_gib": peak_gib(device)}


def measure_pipeline(workload: str, train: Any, args: argparse.Namespace, device: torch.device) -> dict:
    from holomodal.augment import build_image_augmentation, marginal_corruption
    from holomodal.loading import make_loader

    augment = build_image_augmentation(AUGMENT.get(workload))
    image = next(m for m in train.inputs if m != "tabular")
    loader = make_loader(train, args.batch_size, shuffle=True, drop_last=True)
    total = max(args.warmup + args.steps, 4 * args.steps)  # the pipeline is fast: time more batches
    done, start, checksum = 0, None, torch.zeros((), device=device)
    while done < total:
        for batch in loader:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            batch = batch.to(device, non_blocking=True)
            pixels = batch.inputs[image]["pixels"]
            if augment is not None:
                pixels = augment(pixels)
                table, _ = marginal_corruption(batch.inputs["tabular"], batch.cell_missing, 0.3)
                checksum += table["continuous"].sum()
            checksum += pixels.float().mean()
            done += 1
            if done == total:
                break
    sync(device)
    return {"samples_per_s": (total - args.warmup) * args.batch_size / (time.perf_counter() - start)}


# ---- the run -----------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--image-model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=2048, help="synthetic samples (the loaders cycle over them)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, compilation)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="ours and (c): auto = bf16-mixed where supported, else 32-true")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the encoders and fusion")
    parser.add_argument("--reference-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps: checks that the script runs")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/throughput[-quick].json)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.out = args.out or f"benchmarks/results/throughput{'-quick' if args.quick else ''}.json"
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from holomodal.preprocessing import Preprocessor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        schema, frame = write_data(folder, args.rows, args.image_size)
        pre = Preprocessor(schema).fit(frame)
        train, _ = pre.transform(frame)
        print(f"data: {args.rows} synthetic rows written and encoded in {time.perf_counter() - start:.1f} s", flush=True)
        results: dict[str, Any] = {}
        image_model = measure_image_model(args, device)
        print(f"(c) {args.image_model} alone: {image_model['samples_per_s']:.1f} samples/s", flush=True)
        for workload in workloads:
            row = {"ours": measure_ours(workload, train, pre, schema, args, device)}
            print(f"{workload} (a) ours: {row['ours']['samples_per_s']:.1f} samples/s", flush=True)
            row["reference"] = measure_reference(workload, train, pre, schema, args, device, folder)
            print(f"{workload} (b) reference: {row['reference']['samples_per_s']:.1f} samples/s", flush=True)
            row["image_model"] = image_model
            row["pipeline"] = measure_pipeline(workload, train, args, device)
            print(f"{workload} (d) pipeline: {row['pipeline']['samples_per_s']:.1f} samples/s", flush=True)
            a = row["ours"]["samples_per_s"]
            row["ratios"] = {"a/b": ratio(a, row["reference"]["samples_per_s"]), "a/c": ratio(a, image_model["samples_per_s"]),
                             "d/a": ratio(row["pipeline"]["samples_per_s"], a)}
            results[workload] = row

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    record = {"device": device_name, "torch": torch.__version__, "settings": vars(args), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print_table(record)
    print(f"written {out}")


def print_table(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    s = record["settings"]
    table = Table(title=f"samples/s on {record['device']}: {s['image_model']} {s['image_size']} px, batch {s['batch_size']}, "
                        f"{s['steps']} timed steps")
    for col in ("workload", "(a) ours", "(b) reference", "(c) image model", "(d) pipeline", "a/b", "a/c", "d/a",
                "peak GiB a / b"):
        table.add_column(col, justify="right" if col != "workload" else "left")
    for name, row in record["results"].items():
        r = row["ratios"]
        table.add_row(
            name, fmt(row["ours"]["samples_per_s"]), fmt(row["reference"]["samples_per_s"]), fmt(row["image_model"]["samples_per_s"]),
            fmt(row["pipeline"]["samples_per_s"]), fmt(r["a/b"], ".2f"), fmt(r["a/c"], ".2f"), fmt(r["d/a"], ".2f"),
            f"{fmt(row['ours']['peak_gib'], '.2f')} / {fmt(row['reference']['peak_gib'], '.2f')}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
