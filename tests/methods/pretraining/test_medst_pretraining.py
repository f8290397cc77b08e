"""MedST pre-training on covid_cxr's studies over time (tiny encoders, one epoch), its batches
of time-ordered sequences, the run folder as a linear probe's encoder, and the downstream
evaluations."""

import numpy as np
import pandas as pd
import pytest
import torch

from holomodal import Classifier
from holomodal.methods.pretraining.medst import load_medst, read_medst_run, sequence_tensors
from holomodal.methods.pretraining.medst_eval import encode_rows, linear_probe, study_pairs, temporal_order, zero_shot
from holomodal.preprocessing import Preprocessor
from holomodal.pretraining import PRETRAINING, Pretrainer

TINY = {"image": {"model_name": "vit_tiny_patch16_224", "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
        "text": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64}, "embed_dim": 16, "hidden_dim": 32}
TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def covid(data_root):
    from holomodal.data import load_dataset

    return load_dataset("covid_cxr", root=data_root, studies=True, image_size=32)


@pytest.fixture(scope="module")
def pretrained(covid, tmp_path_factory):
    run = tmp_path_factory.mktemp("medst") / "run"
    pre = Pretrainer(covid.schema, method="medst", model=TINY, batch_size=8, trainer=TRAINER, run_dir=run)
    frame = pd.concat([covid.split("train"), covid.split("unlabelled")], ignore_index=True)
    pre.fit(frame, covid.split("val"))
    return pre, run


def test_batches_hold_time_ordered_sequences_of_one_patient(covid):
    from holomodal.pretraining import fit_without_labels
    from holomodal.studies import GROUP_CODE, TIME_VALUE

    spec = PRETRAINING.create("medst")
    frame, schema = spec.prepare(covid.split("train"), covid.schema, {})
    batch = spec.encode(fit_without_labels(schema, frame), frame, schema)
    loader = spec.loader(batch, 6, shuffle=True, seed=0)
    seen_sequences = 0
    for part in loader:
        seq, pos = part.extras["sequence"], part.extras["position"]
        for s in seq.unique().tolist():
            if s < 0:
                continue
            rows = torch.nonzero(seq == s).flatten()
            assert part.extras[GROUP_CODE][rows].unique().numel() == 1  # never across patients
            assert torch.all(torch.diff(part.extras[TIME_VALUE][rows]) > 0)  # in time order
            assert pos[rows].tolist() == list(range(len(rows)))
            seen_sequences += 1
    assert seen_sequences > 20
    images, valid = sequence_tensors(torch.arange(len(seq), dtype=torch.float32)[:, None], seq, pos, 4)
    assert valid.sum().item() == int((seq >= 0).sum())


def test_pretraining_writes_a_run_a_probe_reads(covid, pretrained, tmp_path):
    pre, run = pretrained
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = pre.metrics_
    for name in ("train/global", "train/local", "train/temporal", "train/loss"):
        assert np.isfinite(metrics[name]), name
    assert metrics["train/temporal"] > 0  # the batches held sequences
    record = read_medst_run(run)
    assert record["frontal"] == "image" and record["lateral"] == "image_lateral" and record["model"]["sequence_length"] == 4
    clf = Classifier(covid.schema, method="medst", model={"checkpoint": str(run)}, batch_size=32, trainer=TRAINER,
                     run_dir=tmp_path / "probe")
    clf.fit(covid.split("train"), covid.split("val"))
    module = load_medst(run)
    encoder_state = {k: v for k, v in clf.model_.encoder.state_dict().items()}
    for key, value in module.image_encoder.state_dict().items():
        assert torch.equal(encoder_state[key], value), key  # loaded strictly and kept frozen
    assert all(not p.requires_grad for p in clf.model_.encoder.parameters())
    scores = clf.evaluate(covid.split("test"))
    assert 0.0 <= scores["accuracy"] <= 1.0


def test_downstream_evaluations(covid, pretrained):
    _, run = pretrained
    module = load_medst(run)
    pre = Preprocessor.from_state(read_medst_run(run)["preprocessor"])
    test = covid.split("test")
    features = encode_rows(module, pre, test)
    assert features["cls"].shape == (len(test), 32) and features["image"].shape == (len(test), 16)
    np.testing.assert_allclose(np.linalg.norm(features["image"], axis=1), 1.0, rtol=1e-5)
    names, proba = zero_shot(module, pre, test, {"COVID-19": ["covid pneumonia", "sars cov 2"], "other": ["no covid"]})
    assert names == ["COVID-19", "other"] and proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    y = test["label"].to_numpy()
    probe = linear_probe(features["cls"], y, features["cls"], y, fraction=0.1, seed=0)
    assert probe["train_rows"] >= 2 and 0 <= probe["accuracy"] <= 1
    frame = pd.DataFrame({"patientid": ["a", "a", "a", "b", "b"], "offset": [3, 1, 1, 0, 2]})
    pairs = study_pairs(frame, "patientid", "offset")
    # (0,1) and (0,2) differ in time (day 3 vs 1), (1,2) do not; (3,4) differ; both orders each
    assert sorted(map(tuple, pairs.tolist())) == sorted([(0, 1, 0), (1, 0, 1), (0, 2, 0), (2, 0, 1), (3, 4, 1), (4, 3, 0)])
    emb = np.array([[3.0], [1.0], [1.0], [0.0], [2.0]])  # a feature that is the day itself
    assert temporal_order(emb, pairs, emb, pairs)["accuracy"] == 1.0


def test_readme_commands_pretrain_then_probe(tmp_path, capsys):
    from holomodal.cli import main

    tiny = ["model.image={model_name: vit_tiny_patch16_224, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
            "model.text={hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64}", "model.embed_dim=16",
            "model.hidden_dim=32", "data.options={studies: true, image_size: 32}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "run.loggers=[csv]"]
    run = tmp_path / "medst"
    assert main(["pretrain", "-c", "covid_cxr_medst_pretrain", f"run.dir={run}", *tiny]) == 0
    probe = tmp_path / "probe"
    assert main(["train", "-c", "covid_cxr_medst_probe", f"model.checkpoint={run}", f"run.dir={probe}",
                 "data.options={image_size: 32}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                 "run.loggers=[csv]"]) == 0
    assert (probe / "model").is_dir() and "linear probe on the frozen image encoder" in capsys.readouterr().out
