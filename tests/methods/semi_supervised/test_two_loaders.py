"""The shared semi-supervised mechanism: two loaders, EMA teacher, label fractions."""

import pandas as pd
import pytest
import torch
from torch import nn

from holomodal.loading import labelled_batch_size, repeat_ratio, semi_supervised_loader
from holomodal.methods.semi_supervised.base import ema_update, make_teacher
from holomodal.methods.semi_supervised.fixmatch import fixmatch_mask


def test_batches_hold_one_labelled_row_for_seven_unlabelled_and_an_epoch_is_the_unlabelled_pass(av_digits):
    from holomodal.preprocessing import Preprocessor

    rows = av_digits.split("train").head(180).reset_index(drop=True)
    pre = Preprocessor(av_digits.schema).fit(rows)
    labelled, _ = pre.transform(rows.iloc[:20])
    unlabelled, _ = pre.transform(rows.iloc[20:], with_target=False)
    assert labelled_batch_size(64) == (8, 56)
    loader = semi_supervised_loader(labelled, unlabelled, 64, seed=0)
    batches = [b for b, *_ in loader]
    assert len(batches) == 160 // 56  # one pass over the unlabelled rows, the last partial batch dropped
    assert all(len(b["labelled"]) == 8 and len(b["unlabelled"]) == 56 for b in batches)
    # the labelled loader (2 batches of 8) cycles within the epoch, each pass reshuffled
    seen = torch.cat([b["labelled"].row for b in batches])
    assert len(set(seen.tolist())) == 16
    assert repeat_ratio(705, 69_860) == 13  # STiL's DVM 1 % split
    assert repeat_ratio(349, 3_133) == 1


def test_ema_update_moves_weights_and_batch_norm_statistics_and_copies_counters():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(3.0)
        teacher[0].weight.fill_(1.0)
    student[1].running_mean.fill_(4.0)
    student[1].num_batches_tracked.fill_(7)
    ema_update(teacher, student, momentum=0.75)
    torch.testing.assert_close(teacher[0].weight, torch.full((2, 2), 1.5))  # 0.75 * 1 + 0.25 * 3
    torch.testing.assert_close(teacher[1].running_mean, torch.full((2,), 1.0))  # 0.75 * 0 + 0.25 * 4
    assert int(teacher[1].num_batches_tracked) == 7


def test_fixmatch_mask_keeps_rows_at_or_above_the_threshold():
    labels, mask = fixmatch_mask(torch.tensor([[0.96, 0.04], [0.6, 0.4], [0.05, 0.95]]), 0.95)
    assert labels.tolist() == [0, 0, 1] and mask.tolist() == [True, False, True]


def test_label_fraction_keeps_a_seeded_share_of_every_class(av_digits):
    from holomodal.experiment import keep_label_fraction

    train = av_digits.split("train")
    kept, hidden = keep_label_fraction(train, av_digits.schema, 0.01, seed=3)
    assert len(kept) + len(hidden) == len(train)
    assert kept["digit"].nunique() == train["digit"].nunique()  # every class, however small the share
    assert 20 <= len(kept) <= 30
    again, _ = keep_label_fraction(train, av_digits.schema, 0.01, seed=3)
    pd.testing.assert_frame_equal(kept, again)


def test_cli_trains_fixmatch_on_a_label_fraction_with_hidden_labels_measured(tmp_path):
    from holomodal.cli import main

    run = tmp_path / "run"
    code = main(["train", "-c", "av_digits_stil", "method=fixmatch", "data.label_fraction=0.05",
                 "model.encoders.image={name: lenet, channels: 2, blocks: 1}",
                 "model.encoders.audio={name: lenet, channels: 2, blocks: 2}", "model.dim=16", "model.start_epoch=0",
                 "model.threshold=0.0", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                 f"run.dir={run}", "run.loggers=[csv]", "trainer.enable_progress_bar=false"])
    assert code == 0
    log = pd.read_csv(run / "metrics.csv")
    assert log["pseudo/accuracy"].notna().any()
    assert (run / "model" / "model.safetensors").exists()


def test_supervised_methods_refuse_unlabelled_rows(av_digits):
    from holomodal.errors import DataError
    from holomodal.estimator import Classifier

    rows = av_digits.split("train").head(20)
    with pytest.raises(DataError, match="labelled rows only"):
        Classifier(av_digits.schema).fit(rows, unlabeled=rows)


def test_own_csv_rows_with_an_empty_label_are_the_unlabelled_ones(covid, tmp_path, capsys):
    import json

    import yaml

    from holomodal.cli import main
    from tiny import TINY_ENCODERS, covid_csv_files

    paths = covid_csv_files(covid, tmp_path, {"train": 80, "test": 30})
    train = pd.read_csv(paths["train"])
    train.loc[train.index[::2], "outcome"] = None  # half the rows come without a label
    train.to_csv(paths["train"], index=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"encoders": TINY_ENCODERS, "dim": 16, "start_epoch": 0},
                                      "batch_size": 16, "run": {"loggers": ["csv"]},
                                      "trainer": {"max_epochs": 1, "enable_progress_bar": False}}))
    run = tmp_path / "run"
    code = main(["train", "-c", str(config), "--train", str(paths["train"]), "--test", str(paths["test"]),
                 "--label", "outcome", "--group", "patientid", "method=fixmatch", f"run.dir={run}"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["train"]["unlabelled"]["rows"] == 40  # every unlabelled row, none of them in validation
    assert summary["train"]["rows"] + summary["val"]["rows"] == 40
    # a supervised method leaves them out and says so
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"model": {"encoders": TINY_ENCODERS}, "batch_size": 16, "run": {"loggers": ["csv"]},
                                     "trainer": {"max_epochs": 1, "enable_progress_bar": False}}))
    code = main(["train", "-c", str(plain), "--train", str(paths["train"]), "--label", "outcome", "--group", "patientid",
                 f"run.dir={tmp_path / 'supervised'}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "40 unlabelled training row(s) are left out" in out.out + out.err
