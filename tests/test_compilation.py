"""run.compile: encoders and fusion compiled in place, outputs and checkpoints unchanged."""

import torch

from tiny import TINY_ENCODERS, small_schema
from holomodal.compilation import compile_modules, compile_targets
from holomodal.estimator import Classifier
from holomodal.methods import ModelContext, create_method

ENCODERS = {m: TINY_ENCODERS[m] for m in ("image", "tabular")}


def _tiny_tip():
    specs = {
        "tabular": {"cardinalities": [3, 4], "n_continuous": 2, "columns": ["a", "b", "x", "y"]},
        "xray": {"channels": 1, "size": 32, "mean": [0.5], "std": [0.25]},
    }
    context = ModelContext(specs, {"tabular": "tabular", "xray": "image"}, num_classes=2, task="binary")
    return create_method(
        "tip", context, encoders={"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
        interaction={"dim": 16, "depth": 1, "heads": 2},
    )


def test_targets_are_the_outermost_encoders_and_fusion_modules():
    names = sorted(type(m).__name__ for m in compile_targets(_tiny_tip()))
    # the tabular transformer's own blocks and the timm trunk inside the encoders are not listed separately
    assert names == ["CrossAttentionFusion", "TabularTransformer", "TimmImageEncoder"]


def test_compiled_classifier_matches_eager_and_keeps_its_state_dict_keys(covid, tmp_path):
    schema = small_schema(covid.schema, drop=("text",))
    train = covid.split("train")[schema.column_names].iloc[:64]
    test = covid.split("test")[schema.column_names].iloc[:32]
    common = dict(model={"encoders": ENCODERS}, batch_size=16, seed=3, loggers=["csv"],
                  trainer={"max_epochs": 1, "limit_train_batches": 2, "enable_progress_bar": False, "accelerator": "cpu"})
    eager = Classifier(schema, run_dir=tmp_path / "eager", **common).fit(train)
    compiled = Classifier(schema, run_dir=tmp_path / "compiled", compile=True, **common).fit(train)
    assert compiled.get_params()["compile"] is True
    keys_before = set(eager.model_.state_dict())
    assert set(compiled.model_.state_dict()) == keys_before
    for a, b in zip(eager.model_.state_dict().values(), compiled.model_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the compiled entry points really are in place, and give the eager model's outputs
    assert all(getattr(m, "_holomodal_compiled", False) for m in compile_targets(compiled.model_))
    torch.testing.assert_close(
        torch.from_numpy(compiled.predict_proba(test)), torch.from_numpy(eager.predict_proba(test)), rtol=1e-4, atol=1e-5
    )
    assert compile_modules(compiled.model_) == []  # compiling twice is a no-op
