"""Predicting imports only what the saved model needs (issue 16, item 4): no Lightning, no
torchmetrics, no library of an encoder the model does not use; the plain torch module it
predicts with gives the probabilities of the LightningModule that was trained."""

import copy
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tiny import TINY_ENCODERS, small_schema
from holomodal.estimator import Classifier
from holomodal.methods import METHOD_MODULES, METHODS, create_method, lightning_class
from holomodal.methods.base import FiniteLossGuard, is_lightning
from holomodal.methods.late_fusion import LateFusion

# libraries that cost seconds to import and that predicting with a tabular model never uses
HEAVY = ("lightning", "torchmetrics", "transformers", "open_clip", "timm", "matplotlib", "sklearn")
QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _fit(covid, folder, drop, encoders):
    schema = small_schema(covid.schema, drop=drop)
    names = schema.column_names
    clf = Classifier(schema, model={"encoders": encoders}, batch_size=16, trainer=QUIET, loggers=[], run_dir=folder)
    clf.fit(covid.split("train")[names].iloc[:48], covid.split("val")[names].iloc[:16])
    return clf


@pytest.fixture(scope="module")
def tabular_run(covid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy") / "tabular"
    return _fit(covid, folder, ("image", "text"), {"tabular": TINY_ENCODERS["tabular"]}), folder


@pytest.fixture(scope="module")
def image_run(covid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy") / "image"
    return _fit(covid, folder, ("text",), {m: TINY_ENCODERS[m] for m in ("image", "tabular")}), folder


def test_importing_the_cli_and_prediction_leaves_the_heavy_libraries_out():
    loaded = _loaded_after("import holomodal.cli, holomodal.prediction, holomodal.evaluation, holomodal.methods, "
                           "holomodal.encoders")
    for name in HEAVY:
        assert name not in loaded, f"importing the CLI and prediction imported {name}"


def test_one_row_prediction_of_a_tabular_model_imports_no_training_library(tabular_run, covid, tmp_path):
    clf, folder = tabular_run
    row = covid.split("test")[[c.name for c in clf.schema.tabular]].iloc[:1]
    data, out = tmp_path / "row.csv", tmp_path / "preds.csv"
    row.to_csv(data, index=False)
    loaded = _loaded_after(f"from holomodal.cli import main\nassert main(['predict', {str(folder)!r}, {str(data)!r}, "
                           f"'--out', {str(out)!r}]) == 0")
    for name in HEAVY:
        assert name not in loaded, f"a one-row prediction of a tabular model imported {name}"
    import pandas as pd

    preds = pd.read_csv(out)
    proba = preds[[f"proba_{c}" for c in clf.preprocessor_.classes_]].to_numpy()
    # predict leaves the group column out, predict_proba validates against the whole schema
    np.testing.assert_allclose(proba, clf.predict_proba(row.assign(patientid=None)), atol=1e-6)


def test_the_plain_module_predicts_what_the_trained_lightning_module_does(image_run, covid):
    clf, folder = image_run
    loaded = Classifier.load(folder / "model")
    # trained in its LightningModule form, rebuilt to predict as the plain module of the same method
    assert is_lightning(clf.model_) and not is_lightning(loaded.model_)
    assert isinstance(clf.model_, LateFusion) and type(loaded.model_) is LateFusion
    assert not hasattr(loaded.model_, "val_metrics")
    test = covid.split("test")[clf.schema.column_names].iloc[:40]
    batch, _ = clf._encode(test, "test", None, with_target=False)
    assert not batch.present["image"].all() and batch.present["image"].any()  # absent X-rays among the rows
    with torch.inference_mode():
        expected = clf.model_.eval().predict_step(batch, 0).numpy()
    np.testing.assert_allclose(loaded._probabilities(batch), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(test), clf.predict_proba(test), rtol=0, atol=1e-6)
    assert loaded.model_.state_dict().keys() == clf.model_.state_dict().keys()


def test_the_lightning_form_keeps_the_methods_hooks_and_survives_pickling(image_run):
    clf, _ = image_run
    form = lightning_class(LateFusion)
    assert lightning_class(LateFusion) is form and lightning_class(form) is form and form.__name__ == "LateFusion"
    # the method's own hooks come before Lightning's defaults
    assert form.on_train_epoch_end is FiniteLossGuard.on_train_epoch_end
    model = clf.model_
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(copied) is form
        for key, value in model.state_dict().items():
            assert torch.equal(copied.state_dict()[key], value), key


def test_registry_knows_every_method_before_importing_it_and_builds_both_forms(image_run):
    loaded = _loaded_after("from holomodal.methods import METHODS, METHOD_MODULES\n"
                           "assert METHODS.list() == sorted(METHOD_MODULES), METHODS.list()\n"
                           "assert 'tip' in METHODS and len(METHODS) == len(METHOD_MODULES)")
    assert "lightning" not in loaded
    context = image_run[0]._context()
    plain = create_method("late_fusion", context, trainable=False, encoders=TINY_ENCODERS)
    trained = create_method("late_fusion", context, encoders=TINY_ENCODERS)
    assert type(plain) is LateFusion and isinstance(plain, nn.Module) and not is_lightning(plain)
    assert is_lightning(trained) and isinstance(trained, LateFusion)
    # every module of the table registers the names the table gives it, and nothing else
    METHODS.load_all()
    assert set(METHODS._entries) == set(METHOD_MODULES)
    for name, module in METHOD_MODULES.items():
        assert METHODS.get(name).__module__ == module, name


def test_a_model_rebuilt_to_predict_runs_its_timm_backbone_nhwc_with_the_same_probabilities(image_run, covid):
    from holomodal.encoders.timm_image import TimmImageEncoder
    from holomodal.estimator import use_fast_inference_layout

    clf, _ = image_run
    encoders = {"image": {"name": "timm", "model_name": "test_resnet", "pretrained": False},
                "tabular": TINY_ENCODERS["tabular"]}
    torch.manual_seed(0)
    model = create_method("late_fusion", clf._context(), trainable=False, encoders=encoders).eval()
    batch, _ = clf._encode(covid.split("test")[clf.schema.column_names].iloc[:24], "test", None, with_target=False)
    with torch.inference_mode():
        nchw = model.probabilities(model(batch))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    use_fast_inference_layout(model)
    encoder = model.encoders["image"]
    assert isinstance(encoder, TimmImageEncoder) and encoder.channels_last
    with torch.inference_mode():
        nhwc = model.probabilities(model(batch))
    torch.testing.assert_close(nhwc, nchw, rtol=0, atol=1e-6)
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
