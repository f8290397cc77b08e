"""Training throughput at DVM's shapes: holomodal's step against the seeds' way of training.

For each workload (TIP pre-training and late fusion by default, TIP full fine-tuning on
request; ResNet-50, 17 table features: 4 categorical with DVM's cardinalities and 13
continuous, 286 classes) the variants are

  (a) ours: the method's Lightning training step fed by holomodal's input pipeline (images
      decoded once to uint8, batches gathered by one index per tensor, augmented on the
      device), precision ``auto`` (bf16-mixed on GPUs and on CPUs with native bf16),
      channels_last, fused Adam; eager, and compiled (``run.compile``);
  (b) reference: the same model and losses in fp32 eager PyTorch with torch's default Adam,
      fed the seeds' way: a Dataset that loads each sample's image file (``.npy``, as
      TIP's DVM loader) and augments it alone with torchvision, corrupts the table row in
      Python, default collation, DataLoader workers;
  (c) the timm image model alone, forward + backward + fused Adam step on device tensors at
      the same batch size and precision (the bound for any model built on it);
  (d) the input pipeline alone: (a)'s batches moved to the device and augmented, no model.

A single timing of a few steps is at the mercy of whatever else the machine does, so the
variants take turns: after warm-up rounds (compilation), each round runs one block of steps
of every variant, each ratio is taken within a round, and the table gives its min / median /
max over the rounds. The JSON records the CPU model, threads and torch version. Samples are
synthetic (random images written as JPEG and ``.npy``, random table cells with 10 % missing)
because only shapes matter here.

    python benchmarks/throughput.py                      # CPU: batch 32, 64 px; GPU: batch 256, 128 px
    python benchmarks/throughput.py --quick              # tiny shapes, any machine (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
# pause after a block of the reference, so that its DataLoader workers' prefetching is done
SETTLE_SECONDS = 1.0
AUGMENT = {"tip_pretrain": {"preset": "natural", "rate": 0.95}, "tip_finetune": {"preset": "natural_finetune", "rate": 0.8}}
QUICK = {"image_model": "test_resnet", "image_size": 32, "batch_size": 8, "rows": 48, "steps": 2, "pairs": 2, "warmup_rounds": 1,
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
    from holomodal.methods import ModelContext, create_method, lightning_class
    from holomodal.methods.tip import TIPPretraining

    image = {"name": "timm", "model_name": args.image_model, "normalize": False, "channels_last": ours}
    tabular = {"name": "tabular_transformer", "dim": args.dim, "depth": args.depth, "heads": args.heads}
    interaction = {"dim": args.dim, "depth": args.depth, "heads": args.heads}
    types = {m: "tabular" if m == "tabular" else schema.modality_type(m).value for m in pre.processors}
    optim = {"name": "adam", "lr": 3e-4, "weight_decay": 1.5e-6}
    if workload == "tip_pretrain":
        model = {"encoders": {"image": image, "tabular": tabular}, "interaction": interaction,
                 "augment": AUGMENT[workload]}
        return lightning_class(TIPPretraining)(pre.input_specs, types, model=model, optim=optim)
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


# ---- the measured variants: each times a block of steps after one untimed step ------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def seconds_per_step(step: Any, steps: int, device: torch.device) -> float:
    """Mean seconds of ``steps`` calls of ``step`` after one untimed call, synchronised at both ends."""
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None


class StepTimer(L.Callback):
    """Times the optimiser steps after the first of a fit, synchronising only at the two ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: float | None = None
        self.first = 0
        self.steps = 0
        self.seconds = float("nan")

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self.start is None and trainer.global_step == 1:
            sync(self.device)
            self.start = time.perf_counter()
            self.first = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.first


class Ours:
    """(a) holomodal's training step: a Lightning fit of the method on holomodal's loader,
    precision ``auto``, fused Adam, channels_last; ``compiled`` adds ``run.compile``. Each
    block is a fresh ``Trainer.fit`` of the same module (compiled modules stay compiled)."""

    def __init__(self, workload: str, train: Any, pre: Any, schema: Any, args: argparse.Namespace, device: torch.device,
                 compiled: bool) -> None:
        from holomodal.loading import make_loader
        torch.manual_seed(0)
        self.module = build_module(workload, pre, schema, args, ours=True)
        self.loader = make_loader(train, args.batch_size, shuffle=True, drop_last=True)
        self.precision = resolve_precision(args.precision, device)
        self.compiled, self.device = compiled, device

    def block(self, steps: int) -> float:
        from holomodal.compilation import compile_callbacks

        timer = StepTimer(self.device)
        trainer = L.Trainer(
            accelerator=self.device.type, devices=1, precision=self.precision, max_steps=1 + steps, max_epochs=-1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, callbacks=[timer, *compile_callbacks(self.compiled)],
        )
        trainer.fit(self.module, self.loader)
        return timer.seconds / timer.steps


class Reference:
    """(b) the same model and losses in fp32 eager PyTorch with torch's default Adam, fed the
    seeds' way (per-sample file loading and augmentation in DataLoader workers)."""

    def __init__(self, workload: str, train: Any, pre: Any, schema: Any, args: argparse.Namespace, device: torch.device,
                 folder: Path) -> None:
        self.workload, self.device = workload, device
        self.image = next(m for m in pre.processors if m != "tabular")
        torch.manual_seed(0)
        self.module = build_module(workload, pre, schema, args, ours=False).to(device).train()
        strip_device_augmentation(workload, self.module)
        self.optimiser = torch.optim.Adam(self.module.parameters(), lr=3e-4, weight_decay=1.5e-6)
        dataset = PerSampleDataset(train, folder, workload, self.image, args.image_size)
        workers = args.reference_workers
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                                  num_workers=workers, pin_memory=device.type == "cuda",
                                                  persistent_workers=workers > 0)

    def step(self, sample: dict[str, torch.Tensor]) -> None:
        batch = as_batch(sample, self.image).to(self.device)
        loss = reference_loss(self.workload, self.module, batch)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()

    def block(self, steps: int) -> float:
        samples = iter(self.loader)
        seconds = seconds_per_step(lambda: self.step(next(samples)), steps, self.device)
        # the workers go on loading the batches they prefetched: let them finish here, untimed,
        # rather than on the cores of the next variant's block
        time.sleep(SETTLE_SECONDS)
        return seconds


class ImageModel:
    """(c) the timm image model alone: forward, backward and fused Adam step on device tensors
    at the same batch size and precision (the bound for any model built on it)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        import timm

        torch.manual_seed(0)
        self.model = timm.create_model(args.image_model, num_classes=0).to(device).to(memory_format=torch.channels_last).train()
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=3e-4, fused=True)
        self.x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(
            memory_format=torch.channels_last)
        precision = resolve_precision(args.precision, device)
        self.dtype, self.device = autocast_dtype(precision), device

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.model(self.x).float().mean()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()

    def block(self, steps: int) -> float:
        return seconds_per_step(self.step, steps, self.device)


class Pipeline:
    """(d) holomodal's input pipeline alone: (a)'s batches moved to the device and augmented."""

    def __init__(self, workload: str, train: Any, args: argparse.Namespace, device: torch.device) -> None:
        from holomodal.augment import build_image_augmentation
        from holomodal.loading import make_loader

        self.augment = build_image_augmentation(AUGMENT.get(workload))
        self.image = next(m for m in train.inputs if m != "tabular")
        self.loader = make_loader(train, args.batch_size, shuffle=True, drop_last=True)
        self.device = device

    def step(self, batch: Any) -> torch.Tensor:
        from holomodal.augment import marginal_corruption

        batch = batch.to(self.device, non_blocking=True)
        pixels = batch.inputs[self.image]["pixels"]
        checksum = torch.zeros((), device=self.device)
        if self.augment is not None:
            pixels = self.augment(pixels)
            table, _ = marginal_corruption(batch.inputs["tabular"], batch.cell_missing, 0.3)
            checksum += table["continuous"].sum()
        return checksum + pixels.float().mean()

    def block(self, steps: int) -> float:
        batches = iter(self.loader)
        return seconds_per_step(lambda: self.step(next(batches)), steps, self.device)


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto`` is holomodal's choice (:func:`holomodal.training.auto_precision`)."""
    from holomodal.training import auto_precision

    return setting if setting != "auto" else auto_precision(device.type)


# ---- paired rounds ----------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, Any]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def measure_workload(workload: str, variants: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every variant runs one block per round, in turn (a, a compiled, b, c, d): the rounds
    after the warm-up ones pair the variants under the same machine load, and each ratio is
    taken within a round before its min/median/max over rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.warmup_rounds + args.pairs):
        timed = round_ >= args.warmup_rounds
        for name, variant in variants.items():
            per_step = variant.block(args.steps)
            if timed:
                seconds[name].append(per_step)
        label = "warm-up" if not timed else f"round {round_ - args.warmup_rounds + 1}/{args.pairs}"
        if timed:
            print(f"  {workload} {label}: " + ", ".join(f"{n} {args.batch_size / s[-1]:.1f}" for n, s in seconds.items())
                  + " samples/s", flush=True)
        else:
            print(f"  {workload} {label} done", flush=True)
    speed = {name: [args.batch_size / s for s in values] for name, values in seconds.items()}
    ratios: dict[str, Any] = {}
    eager, compiled, reference = speed["ours"], speed.get("ours_compiled"), speed["reference"]
    ratios["ours/reference"] = spread([a / b for a, b in zip(eager, reference)])
    best = "ours"
    if compiled:
        ratios["ours_compiled/reference"] = spread([a / b for a, b in zip(compiled, reference)])
        ratios["ours_compiled/ours"] = spread([a / b for a, b in zip(compiled, eager)])
        if ratios["ours_compiled/reference"]["median"] > ratios["ours/reference"]["median"]:
            best = "ours_compiled"
    ratios["best/reference"] = {**ratios[f"{best}/reference"], "variant": best}
    if "image_model" in speed:
        ratios["best/image_model"] = spread([a / c for a, c in zip(speed[best], speed["image_model"])])
    if "pipeline" in speed:
        ratios["pipeline/best"] = spread([d / a for d, a in zip(speed["pipeline"], speed[best])])
    return {"samples_per_s": {name: spread(values) for name, values in speed.items()}, "ratios": ratios}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    from holomodal.training import cpu_has_native_bf16

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_native_bf16": cpu_has_native_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu"]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--workloads", default="tip_pretrain,late_fusion", help=f"any of {', '.join(WORKLOADS)}")
    parser.add_argument("--image-model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=128 if cuda else 64)
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    parser.add_argument("--rows", type=int, default=1024, help="synthetic samples (the loaders cycle over them)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block (after one untimed step)")
    parser.add_argument("--pairs", type=int, default=5, help="timed rounds: each variant runs one block per round")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds first (compilation, autotuning)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="(a) and (c): auto = bf16-mixed where supported, else 32-true")
    parser.add_argument("--compile", choices=("both", "off", "only"), default="both",
                        help="(a) eager and compiled (both), eager only (off), compiled only (only)")
    parser.add_argument("--no-parts", action="store_true", help="skip (c) and (d), time only (a) against (b)")
    parser.add_argument("--reference-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps: checks that the script runs")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/throughput-<cpu|cuda>[-quick].json)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    device = torch.device(args.device)
    args.out = args.out or f"benchmarks/results/throughput-{device.type}{'-quick' if args.quick else ''}.json"
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from holomodal.preprocessing import Preprocessor

    info = machine(device)
    print(f"{info['device']}: {info['threads']} threads, torch {info['torch']}, native bf16 {info['cpu_native_bf16']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        schema, frame = write_data(folder, args.rows, args.image_size)
        pre = Preprocessor(schema).fit(frame)
        train, _ = pre.transform(frame)
        print(f"data: {args.rows} synthetic rows written and encoded in {time.perf_counter() - start:.1f} s", flush=True)
        image_model = None if args.no_parts else ImageModel(args, device)
        results: dict[str, Any] = {}
        for workload in workloads:
            variants: dict[str, Any] = {}
            if args.compile != "only":
                variants["ours"] = Ours(workload, train, pre, schema, args, device, compiled=False)
            if args.compile != "off":
                variants["ours_compiled"] = Ours(workload, train, pre, schema, args, device, compiled=True)
            if "ours" not in variants:  # the ratios are named after the eager variant
                variants = {"ours": variants.pop("ours_compiled")}
            variants["reference"] = Reference(workload, train, pre, schema, args, device, folder)
            if image_model is not None:
                variants["image_model"] = image_model
                variants["pipeline"] = Pipeline(workload, train, args, device)
            results[workload] = measure_workload(workload, variants, args)
            results[workload]["precision"] = variants["ours"].precision
            results[workload]["peak_gib"] = peak_gib(device)
            best = results[workload]["ratios"]["best/reference"]
            print(f"{workload}: best ({best['variant']}) / reference = {best['median']:.2f} "
                  f"(min {best['min']:.2f}, max {best['max']:.2f})", flush=True)

    record = {"machine": info, "settings": vars(args), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print_table(record)
    print(f"written {out}")


def print_table(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s, m = record["settings"], record["machine"]
    table = Table(title=f"{m['device']} ({m['threads']} threads, torch {m['torch']}): {s['image_model']} {s['image_size']} px, "
                        f"batch {s['batch_size']}; {s['pairs']} paired rounds of {s['steps']} steps; ratios min / median / max")
    for col in ("workload", "samples/s (median)", "ratio", "min", "median", "max"):
        table.add_column(col, justify="left" if col in ("workload", "samples/s (median)", "ratio") else "right")
    for name, row in record["results"].items():
        speeds = ", ".join(f"{k} {v['median']:.1f}" for k, v in row["samples_per_s"].items())
        for i, (ratio_name, r) in enumerate(row["ratios"].items()):
            label = ratio_name + (f" ({r['variant']})" if "variant" in r else "")
            table.add_row(name if i == 0 else "", speeds if i == 0 else "", label, f"{r['min']:.2f}", f"{r['median']:.2f}",
                          f"{r['max']:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
