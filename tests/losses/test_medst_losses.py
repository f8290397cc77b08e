"""MedST's global, modality-weighted local and temporal cycle-consistency losses, against
values computed by hand (math / numpy) in the tests."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from holomodal.errors import ConfigError
from holomodal.losses.medst import (
    GlobalAlignmentLoss,
    ModalityWeightedLocalAlignment,
    TemporalCycleConsistencyLoss,
)


def _unit(rows):
    array = np.asarray(rows, dtype=np.float64)
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max()
    return shifted - math.log(np.exp(shifted).sum())


def _softmax(x):
    return np.exp(_log_softmax(x))


def _close(actual, expected, rtol=1e-4, atol=1e-5):
    """Compare a float32 result with a float64 reference value or array."""
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- global


def test_global_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # S = image text^T / 0.5 = [[1.2, 0], [1.6, 2]]
    rows = (-1.2 + math.log(math.exp(1.2) + 1) - 2 + math.log(math.exp(1.6) + math.exp(2))) / 2
    columns = (-1.2 + math.log(math.exp(1.2) + math.exp(1.6)) - 2 + math.log(1 + math.exp(2))) / 2
    loss = GlobalAlignmentLoss(temperature=0.5)(image, text)
    torch.testing.assert_close(loss, torch.tensor(rows + columns))


def test_bad_temperature_is_a_config_error():
    with pytest.raises(ConfigError, match="temperature"):
        GlobalAlignmentLoss(temperature=0.0)


# ---------------------------------------------------------------- local


def _set_attention(attention, query_weight, key_weight):
    dim = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight[:dim] = torch.as_tensor(query_weight, dtype=torch.float32)
        attention.in_proj_weight[dim:2 * dim] = torch.as_tensor(key_weight, dtype=torch.float32)
        attention.in_proj_bias.zero_()


def _reference_side(tokens, token_valid, others, other_valid, query_weight, key_weight, tau):
    """One side of the local loss and its weights, sample by sample over the valid tokens."""
    losses, all_weights = [], []
    for b in range(tokens.shape[0]):
        own, other = tokens[b][token_valid[b]], others[b][other_valid[b]]
        weights = np.zeros(tokens.shape[1])
        if len(own) == 0:
            losses.append(0.0)
            all_weights.append(weights)
            continue
        context = _unit([_softmax(own[i] @ other.T / tau) @ other for i in range(len(own))])
        fused = _unit(own * context)
        query = query_weight @ fused.mean(axis=0)
        keys = fused @ np.asarray(key_weight).T
        alpha = _softmax(keys @ query / math.sqrt(tokens.shape[2]))
        weights[np.flatnonzero(token_valid[b])] = alpha
        all_weights.append(weights)
        if len(own) < 2:
            losses.append(0.0)
            continue
        sim = own @ context.T / tau
        terms = [0.5 * (-_log_softmax(sim[i])[i] - _log_softmax(sim[:, i])[i]) for i in range(len(own))]
        losses.append(float(alpha @ np.asarray(terms)))
    return float(np.mean(losses)), np.stack(all_weights)


def test_local_word_loss_by_hand_on_a_symmetric_case():
    # swapping the two coordinates maps word 1 <-> word 2 and patch 1 <-> patch 2, so with
    # identity query/key projections the two words get weight 1/2 each
    words = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    patches = torch.tensor([[[0.8, 0.6], [0.6, 0.8]]])
    loss_fn = ModalityWeightedLocalAlignment(dim=2, temperature=0.1, bidirectional=False)
    _set_attention(loss_fn.word_attention, np.eye(2), np.eye(2))
    out = loss_fn(words, torch.ones(1, 2, dtype=torch.bool), patches, torch.ones(1, 2, dtype=torch.bool))

    s = 1 / (1 + math.exp(-2.0))  # softmax([8, 6])[0]
    c1 = np.array([0.8 * s + 0.6 * (1 - s), 0.6 * s + 0.8 * (1 - s)])
    c1 /= np.linalg.norm(c1)
    c2 = c1[::-1]
    # S_ik = w_i . c_k / 0.1 = [[c1[0], c2[0]], [c1[1], c2[1]]] / 0.1; by symmetry all four
    # cross-entropies are equal
    sim = np.array([[c1[0], c2[0]], [c1[1], c2[1]]]) / 0.1
    ce = -sim[0, 0] + math.log(math.exp(sim[0, 0]) + math.exp(sim[0, 1]))
    torch.testing.assert_close(out["word_weights"], torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(out["word_loss"], torch.tensor(ce, dtype=torch.float32))
    torch.testing.assert_close(out["loss"], out["word_loss"])
    assert out["patch_loss"].item() == 0 and torch.equal(out["patch_weights"], torch.zeros(1, 2))


def _random_batch(seed, batch=2, words=4, patches=5, dim=3):
    generator = torch.Generator().manual_seed(seed)
    word_tokens = F.normalize(torch.randn(batch, words, dim, generator=generator), dim=-1)
    patch_tokens = F.normalize(torch.randn(batch, patches, dim, generator=generator), dim=-1)
    word_valid = torch.ones(batch, words, dtype=torch.bool)
    patch_valid = torch.ones(batch, patches, dtype=torch.bool)
    word_valid[0, 3] = False   # one padded word slot
    patch_valid[1, 3:] = False  # a "missing lateral": two invalid patches
    return word_tokens, word_valid, patch_tokens, patch_valid


def test_local_loss_matches_reference_both_sides():
    torch.manual_seed(0)
    words, word_valid, patches, patch_valid = _random_batch(1)
    loss_fn = ModalityWeightedLocalAlignment(dim=3, temperature=0.1)
    q_word, k_word = np.random.default_rng(2).normal(size=(2, 3, 3))
    q_patch, k_patch = np.random.default_rng(3).normal(size=(2, 3, 3))
    _set_attention(loss_fn.word_attention, q_word, k_word)
    _set_attention(loss_fn.patch_attention, q_patch, k_patch)
    out = loss_fn(words, word_valid, patches, patch_valid)

    w, p = words.double().numpy(), patches.double().numpy()
    wv, pv = word_valid.numpy(), patch_valid.numpy()
    word_loss, word_weights = _reference_side(w, wv, p, pv, q_word, k_word, 0.1)
    patch_loss, patch_weights = _reference_side(p, pv, w, wv, q_patch, k_patch, 0.1)
    _close(out["word_loss"], word_loss)
    _close(out["patch_loss"], patch_loss)
    _close(out["word_weights"], word_weights, atol=1e-6)
    _close(out["patch_weights"], patch_weights, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["word_loss"] + out["patch_loss"])


def test_local_weights_are_zero_on_invalid_tokens_and_sum_to_one():
    torch.manual_seed(0)
    words, word_valid, patches, patch_valid = _random_batch(4)
    out = ModalityWeightedLocalAlignment(dim=3)(words, word_valid, patches, patch_valid)
    assert out["word_weights"][0, 3].item() == 0.0
    assert torch.all(out["patch_weights"][1, 3:] == 0.0)
    torch.testing.assert_close(out["word_weights"].sum(1), torch.ones(2))
    torch.testing.assert_close(out["patch_weights"].sum(1), torch.ones(2))


def test_invalid_tokens_do_not_change_the_result():
    torch.manual_seed(0)
    loss_fn = ModalityWeightedLocalAlignment(dim=3)
    words, word_valid, patches, patch_valid = _random_batch(5)
    before = loss_fn(words, word_valid, patches, patch_valid)
    words, patches = words.clone(), patches.clone()
    words[0, 3] = torch.tensor([5.0, -3.0, 2.0])
    patches[1, 3:] = torch.tensor([[9.0, 1.0, -4.0], [0.0, 0.0, 0.0]])
    after = loss_fn(words, word_valid, patches, patch_valid)
    for key in ("loss", "word_loss", "patch_loss", "word_weights", "patch_weights"):
        assert torch.equal(before[key], after[key]), key


def test_padding_a_word_slot_equals_the_unpadded_sample():
    torch.manual_seed(0)
    loss_fn = ModalityWeightedLocalAlignment(dim=3)
    generator = torch.Generator().manual_seed(6)
    words = F.normalize(torch.randn(1, 3, 3, generator=generator), dim=-1)
    patches = F.normalize(torch.randn(1, 4, 3, generator=generator), dim=-1)
    all_words, all_patches = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    short = loss_fn(words, all_words, patches, all_patches)
    padded_words = torch.cat([words, torch.zeros(1, 1, 3)], dim=1)
    padded_valid = torch.tensor([[True, True, True, False]])
    padded = loss_fn(padded_words, padded_valid, patches, all_patches)
    torch.testing.assert_close(padded["loss"], short["loss"])
    torch.testing.assert_close(padded["word_weights"][:, :3], short["word_weights"])


def test_local_few_or_no_valid_tokens_contribute_zero_without_nan():
    torch.manual_seed(0)
    loss_fn = ModalityWeightedLocalAlignment(dim=3)
    words, word_valid, patches, patch_valid = _random_batch(7, batch=3)
    words.requires_grad_(True)
    patches.requires_grad_(True)
    word_valid[1] = torch.tensor([True, False, False, False])  # one valid word: word side 0
    word_valid[2] = False                                        # nothing valid at all
    patch_valid[2] = False
    out = loss_fn(words, word_valid, patches, patch_valid)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.equal(out["word_weights"][2], torch.zeros(4))
    assert torch.equal(out["patch_weights"][2], torch.zeros(5))
    torch.testing.assert_close(out["word_weights"][1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # samples 1 and 2 add nothing to the word side, which stays a mean over all three samples
    alone = loss_fn(words[:1], word_valid[:1], patches[:1], patch_valid[:1])
    torch.testing.assert_close(out["word_loss"], alone["word_loss"] / 3)
    out["loss"].backward()
    assert torch.isfinite(words.grad).all() and torch.isfinite(patches.grad).all()
    assert torch.equal(words.grad[2], torch.zeros(4, 3))
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.parameters() if p.grad is not None)
    assert loss_fn.word_attention.in_proj_weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- temporal


def _reference_sequence(u, v, steps, tau, variance_weight=0.001, delta=2.0):
    """Per-position FMC and RMR terms of u -> v over the sequence's L valid studies."""
    length = len(u)
    stamps = np.arange(length) / steps
    d2 = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
    logits = -d2(u, v) / tau
    fmc = np.array([-_log_softmax(logits[i])[i] for i in range(length)])
    alpha = np.stack([_softmax(row) for row in logits])
    cycle = -d2(alpha @ v, u) / tau
    rmr = []
    for i in range(length):
        beta = _softmax(cycle[i])
        mu = beta @ stamps
        var = beta @ (stamps - mu) ** 2 + 1e-7
        error = stamps[i] - mu
        rmr.append(error**2 / var + variance_weight * math.log(var) if abs(error) < delta
                   else delta * (abs(error) - delta / 2))
    return fmc, np.asarray(rmr)


def test_fmc_by_hand():
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    reports = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    # ||u_i - v_k||^2 = [[0, 0.8], [2, 0.4]]; logits = -d2 / 0.5
    images_to_reports = (math.log(1 + math.exp(-1.6)) + math.log(1 + math.exp(-3.2))) / 2
    reports_to_images = (math.log(1 + math.exp(-4.0)) + math.log(1 + math.exp(-0.8))) / 2
    out = TemporalCycleConsistencyLoss(temperature=0.5)(images, reports)
    torch.testing.assert_close(out["fmc"], torch.tensor(images_to_reports + reports_to_images))


def test_rmr_by_hand_for_two_steps():
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    reports = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    u, v = images[0].double().numpy(), reports[0].double().numpy()
    tau = 0.5

    def one_direction(a, b):
        # T = 2: stamps (0, 1/2); mu_i = beta_i1 / 2, var_i = beta_i0 beta_i1 / 4
        total = 0.0
        for i in range(2):
            alpha = _softmax([-((a[i] - b[k]) ** 2).sum() / tau for k in range(2)])
            soft = alpha[0] * b[0] + alpha[1] * b[1]
            beta = _softmax([-((soft - a[j]) ** 2).sum() / tau for j in range(2)])
            mu, var = beta[1] / 2, beta[0] * beta[1] / 4 + 1e-7
            total += (i / 2 - mu) ** 2 / var + 0.001 * math.log(var)
        return total / 2

    out = TemporalCycleConsistencyLoss(temperature=tau)(images, reports)
    expected = one_direction(u, v) + one_direction(v, u)
    _close(out["rmr"], expected)
    torch.testing.assert_close(out["loss"], out["fmc"] + out["rmr"])


@pytest.mark.parametrize("delta", [2.0, 0.2])
def test_temporal_loss_matches_reference_for_three_steps(delta):
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(2, 3, 4, generator=generator), dim=-1)
    reports = F.normalize(images + 0.5 * torch.randn(2, 3, 4, generator=generator), dim=-1)
    out = TemporalCycleConsistencyLoss(temperature=0.1, huber_delta=delta)(images, reports)
    fmc, rmr = 0.0, 0.0
    for a, b in ((images, reports), (reports, images)):
        terms = [_reference_sequence(a[s].double().numpy(), b[s].double().numpy(), 3, 0.1, delta=delta)
                 for s in range(2)]
        fmc += np.concatenate([t[0] for t in terms]).mean()
        rmr += np.concatenate([t[1] for t in terms]).mean()
    _close(out["fmc"], fmc)
    _close(out["rmr"], rmr, atol=1e-4)


def test_huber_branch_by_hand():
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    reports = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    delta, log_eps = 0.1, math.log(1e-7)
    huber = lambda x: delta * (abs(x) - delta / 2)  # noqa: E731
    # images -> reports: all reports equal, so v~_i = (1, 0) and the cycle lands on study 0
    # with beta ~ one-hot (tau = 0.01): mu = 0, var ~ 0; errors 0, 1/3, 2/3
    images_to_reports = (0.001 * log_eps + huber(1 / 3) + huber(2 / 3)) / 3
    # reports -> images: every report attends to image 0, whose cycle back is uniform over
    # the three identical reports: mu = 1/3, var = 2/27; errors -1/3, 0, 1/3
    reports_to_images = (2 * huber(1 / 3) + 0.001 * math.log(2 / 27)) / 3
    out = TemporalCycleConsistencyLoss(temperature=0.01, huber_delta=delta)(images, reports)
    torch.testing.assert_close(out["rmr"], torch.tensor(images_to_reports + reports_to_images), rtol=1e-4, atol=1e-6)
    # with MedST's delta = 2 the same errors fall in the variance branch, where var ~ 1e-7 explodes
    assert TemporalCycleConsistencyLoss(temperature=0.01)(images, reports)["rmr"] > 1e5


def test_padded_sequence_equals_the_shorter_one_on_the_same_time_grid():
    generator = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(2, 4, 3, generator=generator), dim=-1)
    reports = F.normalize(torch.randn(2, 4, 3, generator=generator), dim=-1)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    loss_fn = TemporalCycleConsistencyLoss()
    together = loss_fn(images, reports, valid)

    # the padded sequence alone: its three studies keep the stamps 0, 1/4, 2/4 of T = 4
    fmc, rmr = 0.0, 0.0
    for a, b in ((images, reports), (reports, images)):
        f, r = _reference_sequence(a[1, :3].double().numpy(), b[1, :3].double().numpy(), 4, 0.1)
        fmc, rmr = fmc + f.mean(), rmr + r.mean()
    padded_alone = loss_fn(images[1:], reports[1:], valid[1:])
    _close(padded_alone["fmc"], fmc)
    _close(padded_alone["rmr"], rmr, atol=1e-4)

    # garbage in the padded slot changes nothing
    images_garbage, reports_garbage = images.clone(), reports.clone()
    images_garbage[1, 3], reports_garbage[1, 3] = 7.0, -3.0
    assert torch.equal(loss_fn(images_garbage, reports_garbage, valid)["loss"], together["loss"])

    # the batch mean is over all valid positions: 4 of the full sequence, 3 of the padded one
    full_alone = loss_fn(images[:1], reports[:1])
    for key in ("fmc", "rmr"):
        torch.testing.assert_close(together[key], (4 * full_alone[key] + 3 * padded_alone[key]) / 7)


def test_sequences_with_one_study_contribute_nothing():
    generator = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(2, 3, 3, generator=generator), dim=-1)
    reports = F.normalize(torch.randn(2, 3, 3, generator=generator), dim=-1)
    loss_fn = TemporalCycleConsistencyLoss()
    valid = torch.tensor([[True, True, True], [True, False, False]])
    torch.testing.assert_close(loss_fn(images, reports, valid)["loss"], loss_fn(images[:1], reports[:1])["loss"])


def test_temporal_all_invalid_is_a_connected_zero():
    images = torch.randn(2, 4, 3, requires_grad=True)
    reports = torch.randn(2, 4, 3, requires_grad=True)
    valid = torch.tensor([[True, False, False, False], [False] * 4])
    out = TemporalCycleConsistencyLoss()(images, reports, valid)
    assert out["loss"].item() == 0.0 and out["loss"].grad_fn is not None
    out["loss"].backward()
    assert torch.equal(images.grad, torch.zeros_like(images)) and torch.equal(reports.grad, torch.zeros_like(reports))


def test_temporal_gradients_are_finite_with_padding():
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(3, 4, 8, generator=generator), dim=-1).requires_grad_(True)
    reports = F.normalize(torch.randn(3, 4, 8, generator=generator), dim=-1).requires_grad_(True)
    valid = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    out = TemporalCycleConsistencyLoss()(images, reports, valid)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(images.grad).all() and torch.isfinite(reports.grad).all()
    assert torch.equal(images.grad[2], torch.zeros(4, 8)) and torch.equal(images.grad[1, 2:], torch.zeros(2, 8))
    assert images.grad[0].abs().sum() > 0


def test_temporal_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="valid"):
        TemporalCycleConsistencyLoss()(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2),
                                       torch.ones(1, 4, dtype=torch.bool))
