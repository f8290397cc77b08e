import torch

from holomodal.batch import Batch
from holomodal.methods import ModelContext, create_method


def _context():
    specs = {
        "image": {"channels": 1, "size": 28, "mean": [0.1], "std": [0.3]},
        "audio": {"n_mels": 20, "frames": 40},
    }
    return ModelContext(specs, {"image": "image", "audio": "audio"}, num_classes=10, task="multiclass")


def _batch(n=5):
    g = torch.Generator().manual_seed(0)
    return Batch(
        inputs={
            "image": {"pixels": torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8, generator=g)},
            "audio": {"spectrogram": torch.randn(n, 1, 20, 40, generator=g)},
        },
        present={"image": torch.ones(n, dtype=torch.bool), "audio": torch.tensor([True, False, True, True, False])},
        target=torch.arange(n) % 10,
    ).zero_missing()


def _model():
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
    torch.manual_seed(0)
    return create_method("i2m2", _context(), encoders=enc, head={"hidden": 16}).eval()


def test_combined_prediction_is_normalised_product_of_expert_distributions():
    model, batch = _model(), _batch()
    with torch.no_grad():
        experts = model.expert_logits(batch)
        combined = model.probabilities(model(batch))
    product = torch.ones_like(combined)
    for z in experts.values():
        product = product * torch.softmax(z, dim=-1)
    product = product / product.sum(dim=-1, keepdim=True)
    assert set(experts) == {"image", "audio", "inter"}
    torch.testing.assert_close(combined, product, atol=1e-6, rtol=1e-5)


def test_absent_modality_intra_expert_contributes_nothing():
    model, batch = _model(), _batch()
    with torch.no_grad():
        experts = model.expert_logits(batch)
    absent = ~batch.present["audio"]
    assert torch.all(experts["audio"][absent] == 0)
    assert torch.all(experts["audio"][~absent].abs().sum(dim=1) > 0)


def test_expert_stage_trains_each_expert_on_its_own_loss():
    model = create_method(
        "i2m2", _context(), encoders={"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}},
        init="pretrained_experts", expert_epochs=2,
    )
    batch = _batch()
    assert model.training_experts_alone
    model.training_loss(batch).backward()
    # the image expert's gradient does not depend on the audio expert: training alone
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()}
    assert all(grads.values())


def test_regression_prediction_is_the_precision_weighted_mean_of_present_experts():
    ctx = ModelContext(_context().input_specs, _context().modality_types, num_classes=1, task="regression")
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
    torch.manual_seed(0)
    model = create_method("i2m2", ctx, encoders=enc, head={"hidden": 16}).eval()
    with torch.no_grad():
        model.log_variance["image"].fill_(-1.0)
        model.log_variance["audio"].fill_(0.5)
    batch = _batch()
    batch.target = torch.randn(len(batch))
    with torch.no_grad():
        means = {k: v.reshape(-1) for k, v in model.expert_logits(batch).items()}
        out = model(batch).reshape(-1)
    lam = {k: torch.exp(-model.log_variance[k]).detach() for k in means}
    audio = batch.present["audio"].float()
    expected = (lam["image"] * means["image"] + lam["audio"] * audio * means["audio"] + lam["inter"] * means["inter"]) / \
        (lam["image"] + lam["audio"] * audio + lam["inter"])
    torch.testing.assert_close(out, expected)
    # the Gaussian NLL trains the variances too
    model.train()
    model.training_loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in model.log_variance.values())
