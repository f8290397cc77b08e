"""DyMo's selection core: subset codes, statistics, reward, quality/ICS and the greedy
per-sample selector on toy models whose helpful modalities are known."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from holomodal.errors import ConfigError, DataError
from holomodal.selection import (
    DyMoSelector,
    SubsetStatistics,
    all_subsets,
    ics,
    quality,
    reward,
    subset_id,
)


def phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------- subset codes

def test_subset_id_is_bitmask_minus_one_and_all_subsets_lists_that_order():
    usage = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    assert subset_id(usage).tolist() == [0, 1, 2, 3, 6]
    assert all_subsets(2).tolist() == [[True, False], [False, True], [True, True]]
    assert subset_id(all_subsets(3)).tolist() == list(range(7))


def test_subset_id_names_the_rows_with_nothing_to_use():
    usage = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.bool)
    with pytest.raises(DataError, match=r"no modality to use.*\[1, 3\]"):
        subset_id(usage)


# ---------------------------------------------------------------- statistics

def _features():
    """(S=3, N=5, D=2): rows 0-1 class 0, rows 2-4 class 1."""
    subset0 = [[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]]
    subset1 = [[0.6, 0.8], [0.8, 0.6], [1, 0], [0, 1], [0, 1]]
    subset2 = [[1, 0], [-1, 0], [1, 0], [1, 0], [1, 0]]
    return torch.tensor([subset0, subset1, subset2], dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1])


def test_fit_cosine_prototypes_rms_scales_and_overall():
    features, labels = _features()
    stats = SubsetStatistics.fit(features, labels, num_classes=2, metric="cos")
    expected_prototypes = torch.tensor([
        [[0.5, 0.5], [2 / 3, 1 / 3]],
        [[0.7, 0.7], [1 / 3, 2 / 3]],
        [[0.0, 0.0], [1.0, 0.0]],
    ], dtype=torch.float64)
    torch.testing.assert_close(stats.prototypes, expected_prototypes)
    # subset 0 class 1: d = 1 - z.c = 1/3, 1/3, 2/3 -> RMS sqrt((1/9 + 1/9 + 4/9) / 3); the
    # std of these d (0.157) would be the wrong scale
    # subset 1 class 0: d = 1 - (0.42 + 0.56) = 0.02 twice; class 1: d = 2/3, 1/3, 1/3
    # subset 2 class 0: c = 0, d = 1 twice; class 1: every row on the prototype, d = 0
    expected_scales = torch.tensor([
        [0.5, math.sqrt(6 / 27)],
        [0.02, math.sqrt(6 / 27)],
        [1.0, 0.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(stats.scales, expected_scales)
    torch.testing.assert_close(stats.overall, expected_prototypes.mean(dim=0))
    assert stats.metric == "cos" and stats.num_modalities == 2 and stats.num_classes == 2 and stats.dim == 2


def test_fit_euclidean_scale_is_rms_of_unsquared_distance():
    features, labels = _features()
    stats = SubsetStatistics.fit(features, labels, num_classes=2, metric="sqeuclid")
    # subset 0 class 1: ||z - (2/3, 1/3)|| = sqrt2/3, sqrt2/3, 2 sqrt2/3 -> RMS sqrt(12/27) = 2/3
    # subset 0 class 0: ||(1,0) - (.5,.5)|| = sqrt(0.5) twice
    assert stats.scales[0, 1].item() == pytest.approx(2 / 3)
    assert stats.scales[0, 0].item() == pytest.approx(math.sqrt(0.5))
    assert stats.scales[2, 0].item() == pytest.approx(1.0)


def test_fit_names_a_class_without_rows_and_rejects_bad_shapes():
    features, labels = _features()
    with pytest.raises(DataError, match="class 2"):
        SubsetStatistics.fit(features, labels, num_classes=3, metric="cos")
    with pytest.raises(DataError, match="2\\*\\*M - 1"):
        SubsetStatistics.fit(features[:2], labels, num_classes=2, metric="cos")
    with pytest.raises(ConfigError, match="cos, sqeuclid"):
        SubsetStatistics.fit(features, labels, num_classes=2, metric="l1")


def test_statistics_round_trip_through_safetensors(tmp_path):
    features, labels = _features()
    for metric in ("cos", "sqeuclid"):
        stats = SubsetStatistics.fit(features.float(), labels, num_classes=2, metric=metric)
        tensors = stats.to_tensors(prefix="head.dymo.")
        assert tensors["head.dymo.metric"].dtype == torch.uint8
        save_file(tensors, str(tmp_path / f"{metric}.safetensors"))
        back = SubsetStatistics.from_tensors(load_file(str(tmp_path / f"{metric}.safetensors")), prefix="head.dymo.")
        assert back.metric == metric
        for name in ("prototypes", "scales", "overall"):
            torch.testing.assert_close(getattr(back, name), getattr(stats, name), rtol=0, atol=0)
    with pytest.raises(DataError, match="dymo.scales"):
        SubsetStatistics.from_tensors({k: v for k, v in tensors.items() if "scales" not in k}, prefix="head.dymo.")


# ---------------------------------------------------------------- reward

def test_reward_both_calibrations_by_hand():
    q_without = torch.tensor([0.6, 0.6, 0.9])
    p_without = torch.tensor([0.8, 0.3, 0.5])
    q_with = torch.tensor([0.9, 0.7, 0.95])
    p_with = torch.tensor([0.4, 0.6, 0.5])
    # row 0: p drops 0.8 -> 0.4; rows 1 and 2: p rises or stays, G = 1
    logratio = reward(q_without, p_without, q_with, p_with, "logratio")
    expected_log = [0.9 * math.log(0.8) / math.log(0.4 + 1e-9) - 0.6, 0.7 - 0.6, 0.95 - 0.9]
    torch.testing.assert_close(logratio, torch.tensor(expected_log))
    ratio = reward(q_without, p_without, q_with, p_with, "ratio")
    expected_ratio = [0.9 * 0.4 / (0.8 + 1e-9) - 0.6, 0.7 - 0.6, 0.95 - 0.9]
    torch.testing.assert_close(ratio, torch.tensor(expected_ratio))
    assert logratio[0].item() == pytest.approx(0.9 * 0.243529 - 0.6, abs=1e-5)
    assert ratio[0].item() == pytest.approx(-0.15, abs=1e-6)
    with pytest.raises(ConfigError, match="logratio, ratio"):
        reward(q_without, p_without, q_with, p_with, "log")


# ---------------------------------------------------------------- quality and ICS

def _two_modality_stats(metric):
    prototypes = torch.zeros(3, 2, 2)
    prototypes[2] = torch.tensor([[0.8, 0.0], [0.0, 0.6]])
    prototypes[0] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    scales = torch.tensor([[0.3, 0.3], [0.3, 0.3], [0.1, 0.5]])
    overall = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    return SubsetStatistics(prototypes, scales, overall, metric)


def test_quality_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    cos = quality(z, _two_modality_stats("cos"), temperature=0.1)
    # scores z.c / tau: (10, 0) and (6, 8)
    assert cos.tolist() == pytest.approx([1 / (1 + math.exp(-10)), 1 / (1 + math.exp(-2))], rel=1e-6)
    z = torch.tensor([[0.5, 0.0]])
    euclid = quality(z, _two_modality_stats("sqeuclid"), temperature=0.1)
    # -||z - c||^2 / tau: -0.25/0.1 and -1.25/0.1, a gap of 10
    assert euclid.item() == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)


def test_ics_uses_the_classifier_class_and_the_used_subset():
    stats = _two_modality_stats("cos")
    z = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.6, 0.8]])
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    usage = torch.tensor([[1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    p = ics(z, logits, usage, stats)
    # row 0: class 1, subset 2: d = 1 - 0.8 * 0.6 = 0.52, sigma 0.5
    # row 1: class 0, subset 2: d = 1 - 0.6 * 0.8 = 0.52, sigma 0.1
    # row 2: class 1, subset 0: d = 1 - 0.8 * 0.5 = 0.6, sigma 0.3
    expected = [2 * (1 - phi(0.52 / 0.5)), 2 * (1 - phi(0.52 / 0.1)), 2 * (1 - phi(0.6 / 0.3))]
    assert p.tolist() == pytest.approx(expected, rel=1e-5)

    euclid = ics(z[:1], logits[:1], usage[:1], _two_modality_stats("sqeuclid"))
    # ||(0.6, 0.8) - (0, 0.6)|| = sqrt(0.4), not squared
    assert euclid.item() == pytest.approx(2 * (1 - phi(math.sqrt(0.4) / 0.5)), rel=1e-5)


def test_ics_stays_in_zero_one_for_zero_scales_and_negative_distances():
    stats = _two_modality_stats("cos")
    stats.scales[2] = 0.0
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    usage = torch.ones(3, 2, dtype=torch.bool)
    # on the prototype of a zero-scale class: p = 1; off it: p tiny but positive; an
    # unnormalised z with z.c > 1 (d < 0): clamped to 1
    z = torch.tensor([[1.25, 0.0], [1.0, 0.0], [5.0, 0.0]])
    p = ics(z, logits, usage, stats)
    assert p[0].item() == 1.0 and 0 < p[1].item() < 1e-30 and p[2].item() == 1.0


# ---------------------------------------------------------------- the selector

AXES = torch.tensor([[0.9, 0.0], [0.0, 0.9]])


def _axis_stats(num_modalities=3):
    subsets = 2**num_modalities - 1
    return SubsetStatistics(AXES.expand(subsets, 2, 2).clone(), torch.full((subsets, 2), 0.2), AXES.clone(), "cos")


class ToyModel:
    """z = normalize(sum of the used modalities' vectors), logits = 5 z: modality vectors
    aligned with a class axis help, ones off it hurt. Records every usage mask."""

    def __init__(self, vectors):
        self.vectors = vectors  # (B, M, 2)
        self.calls = []

    def __call__(self, usage):
        assert not torch.is_grad_enabled()
        self.calls.append(usage.clone())
        return self.outputs(usage)

    def outputs(self, usage):
        """The same outputs, outside the selector: not recorded."""
        z = F.normalize((self.vectors * usage[:, :, None]).sum(dim=1), dim=1)
        return 5.0 * z, z


def _masks(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_selector_decides_per_sample_in_one_batch():
    vectors = torch.tensor([
        [[1.0, 0.3], [1.0, 0.0], [-0.3, 0.9]],  # class 0: modality 1 sharpens it, 2 blurs it
        [[0.3, 1.0], [1.0, -0.2], [0.0, 1.0]],  # class 1: the other way round
        [[1.0, 0.5], [1.0, 0.1], [1.0, 0.0]],  # class 0: both help, taken over two rounds
        [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # nothing recovered
    ])
    observed = _masks([[1, 0, 0]] * 4)
    recovered = _masks([[0, 1, 1], [0, 1, 1], [0, 1, 1], [0, 0, 0]])
    for calibration in ("logratio", "ratio"):
        model = ToyModel(vectors)
        result = DyMoSelector(_axis_stats(), calibration=calibration).select(model, observed, recovered)
        assert result.usage.tolist() == [[True, True, False], [True, False, True], [True, True, True],
                                         [True, False, False]]
        first = result.rewards[0]
        assert first[0, 1] > 0 and first[0, 2] < 0 and first[1, 1] < 0 and first[1, 2] > 0
        assert first[2, 1] > 0 and first[2, 2] > first[2, 1]
        assert torch.isnan(first[:, 0]).all() and torch.isnan(first[3]).all()
        # round 2: only row 2 still has an open candidate; the rejected ones are not retried
        assert result.rounds == 2 and result.rewards[1][2, 1] > 0
        assert torch.isnan(result.rewards[1][[0, 1, 3]]).all()
        # round 1: a pass per open modality plus one with the current masks; round 2: one
        # pass; the final prediction reuses the accepted passes' outputs
        assert result.forward_passes == len(model.calls) == 4
        assert not result.started_from_recovered.any()
        final_logits, _ = model.outputs(result.usage)
        torch.testing.assert_close(result.probabilities, torch.softmax(final_logits, dim=1))
        assert result.probabilities.argmax(dim=1).tolist() == [0, 1, 0, 0]


def _reference_select(model, stats, observed, recovered, calibration):
    """The spec's loop one sample at a time, with no caching: the selector must agree."""
    chosen = []
    for b in range(observed.shape[0]):
        def outputs(mask):
            logits, z = model.outputs(mask.expand(observed.shape[0], -1).clone())
            return logits[b:b + 1], z[b:b + 1]

        usage = observed[b].clone()
        candidates = recovered[b] & ~observed[b]
        if not usage.any():
            qualities = {u: quality(outputs(F.one_hot(torch.tensor(u), 3).bool())[1], stats).item()
                         for u in range(3) if candidates[u]}
            usage[max(qualities, key=qualities.get)] = True
        rejected = torch.zeros(3, dtype=torch.bool)
        while True:
            logits, z = outputs(usage)
            q, p = quality(z, stats), ics(z, logits, usage[None], stats)
            rewards = {}
            for u in range(3):
                if candidates[u] and not usage[u] and not rejected[u]:
                    trial = usage.clone()
                    trial[u] = True
                    logits_u, z_u = outputs(trial)
                    rewards[u] = reward(q, p, quality(z_u, stats), ics(z_u, logits_u, trial[None], stats),
                                        calibration).item()
            for u, r in rewards.items():
                rejected[u] |= r < 0
            if not any(r > 0 for r in rewards.values()):
                break
            usage[max(rewards, key=rewards.get)] = True
        chosen.append(usage)
    return torch.stack(chosen)


@pytest.mark.parametrize("missing", [2, 3])
def test_selector_matches_the_uncached_loop_and_bounds_its_passes(missing):
    generator = torch.Generator().manual_seed(missing)
    batch = 64
    # class-0 rows: the observed vectors point near axis 0; recovered ones scatter around it,
    # some helping and some not
    vectors = torch.tensor([0.6, 0.0]) + 0.6 * torch.randn(batch, 3, 2, generator=generator)
    if missing == 2:
        kept = torch.randint(0, 3, (batch,), generator=generator)
        observed = F.one_hot(kept, 3).bool()
        vectors[observed] = torch.tensor([1.0, 0.0]) + 0.4 * torch.randn(batch, 2, generator=generator)
    else:
        observed = torch.zeros(batch, 3, dtype=torch.bool)
    recovered = ~observed
    stats = _axis_stats()
    for calibration in ("logratio", "ratio"):
        model = ToyModel(vectors)
        result = DyMoSelector(stats, calibration=calibration).select(model, observed, recovered)
        expected = _reference_select(model, stats, observed, recovered, calibration)
        assert torch.equal(result.usage, expected)
        assert result.forward_passes == len(model.calls)
        assert result.forward_passes <= missing * (missing + 1) + 1
        opened = sum(int((~torch.isnan(r)).any(dim=0).sum()) for r in result.rewards)
        cold_passes = 3 if missing == 3 else 0
        assert result.forward_passes <= cold_passes + 1 + opened
        # rows take different numbers of recovered modalities (none, one, two) and some
        # candidates are rejected: the masks are not one row's broadcast
        taken = (result.usage & ~observed).sum(dim=1)
        assert set(taken.tolist()) >= ({0, 1, 2} if missing == 2 else {1, 2})
        assert any((r < 0).any() for r in result.rewards)


def test_selector_names_rows_with_nothing_observed_or_recovered():
    observed = _masks([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    recovered = _masks([[0, 1, 0], [0, 0, 0], [0, 0, 1]])
    model = ToyModel(torch.ones(3, 3, 2))
    with pytest.raises(DataError, match=r"no observed and no recovered modality in rows \[1\]"):
        DyMoSelector(_axis_stats()).select(model, observed, recovered)
    assert model.calls == []


def test_selector_starts_an_unobserved_row_from_its_best_quality_recovered_modality():
    vectors = torch.tensor([
        [[1.0, 0.8], [1.0, 0.05], [0.6, 0.7]],  # nothing observed: modality 1 alone is the sharpest
        [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]],  # an ordinary row beside it
    ])
    observed = _masks([[0, 0, 0], [1, 0, 0]])
    recovered = _masks([[1, 1, 1], [0, 0, 0]])
    model = ToyModel(vectors)
    stats = _axis_stats()
    result = DyMoSelector(stats).select(model, observed, recovered)
    alone = F.normalize(vectors[0], dim=1)
    assert quality(alone, stats).argmax().item() == 1
    # the first passes try each recovered modality alone for row 0, the other row keeping its mask
    assert [call[0].tolist() for call in model.calls[:3]] == [[True, False, False], [False, True, False],
                                                               [False, False, True]]
    assert all(call[1].tolist() == [True, False, False] for call in model.calls[:3])
    # adding 0 or 2 to modality 1 blurs z, both rejected: row 0 keeps modality 1 alone
    assert result.usage.tolist() == [[False, True, False], [True, False, False]]
    assert result.started_from_recovered.tolist() == [True, False]
    assert result.rounds == 1 and (result.rewards[0][0, [0, 2]] < 0).all()
    # 3 single-modality passes and 2 reward passes; the current outputs come from the first ones
    assert result.forward_passes == 5


def test_selector_rejects_bad_options_and_mismatched_masks():
    stats = _axis_stats()
    with pytest.raises(ConfigError, match="logratio, ratio"):
        DyMoSelector(stats, calibration="exp")
    with pytest.raises(ConfigError, match="temperature"):
        DyMoSelector(stats, temperature=0.0)
    with pytest.raises(ConfigError, match="2 modalities"):
        DyMoSelector(stats).select(ToyModel(torch.ones(1, 2, 2)), _masks([[1, 0]]), _masks([[0, 1]]))
    with pytest.raises(ConfigError, match="logits of shape"):
        DyMoSelector(stats).select(lambda usage: (torch.zeros(1, 5), torch.zeros(1, 2)),
                                   _masks([[1, 0, 0]]), _masks([[0, 1, 0]]))
