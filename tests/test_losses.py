"""Losses and preference metrics against float64 references written with math/numpy loops.

The references below never call the code under test; they restate DESIGN.md's formulas one scalar
at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from styleprefs.trainer.losses import (
    combine_embeddings,
    dpo_loss,
    min_snr_weights,
    orpo_loss,
    orrpo_loss,
    per_sample_error,
    rpo_loss,
    rpo_weights,
    sft_loss,
)
from styleprefs.trainer.metrics import preference_metrics

RTOL = 1e-10


# ----------------------------------------------------------------------------- references


def ref_nls(x: float) -> float:
    """-log(sigmoid(x)) = log(1 + exp(-x)), evaluated without overflow."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def ref_per_sample_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.zeros(pred.shape[0])
    for i in range(pred.shape[0]):
        p, t = pred[i].ravel(), target[i].ravel()
        out[i] = sum((float(a) - float(b)) ** 2 for a, b in zip(p, t)) / p.size
    return out


def ref_dpo(ew, el, rw, rl, beta) -> float:
    total = 0.0
    for i in range(len(ew)):
        logit = -(beta / 2) * ((ew[i] - rw[i]) - (el[i] - rl[i]))
        total += ref_nls(logit)
    return total / len(ew)


def ref_rpo(ew, el, rw, rl, W, beta) -> float:
    total = 0.0
    for i in range(len(ew)):
        for j in range(len(el)):
            logit = -(beta / 2) * ((ew[i] - rw[i]) - (el[j] - rl[j]))
            total += W[i][j] * ref_nls(logit)
    return total / len(ew)


def ref_orpo(ew, el, beta, lam) -> float:
    sft = sum(ew) / len(ew)
    pref = sum(ref_nls(beta * (el[i] - ew[i])) for i in range(len(ew))) / len(ew)
    return sft + lam * pref


def ref_orrpo(ew, el, W, beta, lam) -> float:
    sft = sum(ew) / len(ew)
    pref = 0.0
    for i in range(len(ew)):
        for j in range(len(el)):
            pref += W[i][j] * ref_nls(beta * (el[j] - ew[i]))
    return sft + lam * pref / len(ew)


def ref_cos(a, b) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


def ref_weights(emb_w, emb_l, tau) -> np.ndarray:
    W = np.zeros((len(emb_w), len(emb_l)))
    for i in range(len(emb_w)):
        scores = [-(1 - ref_cos(emb_w[i], emb_l[j])) / tau for j in range(len(emb_l))]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        for j in range(len(emb_l)):
            W[i, j] = exps[j] / sum(exps)
    return W


def ref_unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt((v**2).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- inputs


def errors(b: int, seed: int, b_l: int | None = None, scale: float = 1e-3):
    """Policy errors near 0.1 and reference errors within ~scale of them (DPO logits of order 1 at beta 5000)."""
    g = torch.Generator().manual_seed(seed)
    b_l = b if b_l is None else b_l
    ew = 0.05 + 0.1 * torch.rand(b, generator=g, dtype=torch.float64)
    el = 0.05 + 0.1 * torch.rand(b_l, generator=g, dtype=torch.float64)
    rw = ew + scale * torch.randn(b, generator=g, dtype=torch.float64)
    rl = el + scale * torch.randn(b_l, generator=g, dtype=torch.float64)
    return ew, el, rw, rl


def random_weights(b_w: int, b_l: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(b_w, b_l, generator=g, dtype=torch.float64)
    return W / W.sum(dim=1, keepdim=True)


def as_list(t: torch.Tensor) -> list:
    return t.tolist()


# ----------------------------------------------------------------------------- per-sample error


def test_per_sample_error_matches_reference_and_has_batch_shape():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    err = per_sample_error(pred, target)
    assert err.shape == (3,)
    assert err.dtype == torch.float64
    np.testing.assert_allclose(err.numpy(), ref_per_sample_error(pred.numpy(), target.numpy()), rtol=RTOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_per_sample_error_upcasts_low_precision(dtype):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    target = (pred.float() + 1e-2 * torch.randn(2, 4, 8, 8, generator=g)).to(dtype)
    err = per_sample_error(pred, target)
    assert err.dtype == torch.float32
    exact = ref_per_sample_error(pred.double().numpy(), target.double().numpy())
    np.testing.assert_allclose(err.numpy(), exact, rtol=1e-5)


def test_per_sample_error_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        per_sample_error(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 1))


# ----------------------------------------------------------------------------- losses vs references


def test_sft_loss_matches_reference():
    ew, *_ = errors(7, seed=2)
    assert math.isclose(sft_loss(ew).item(), sum(as_list(ew)) / 7, rel_tol=RTOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighted_sft_loss_matches_reference(prediction_type):
    """Weights as Hang et al. 2023 (and diffusers' --snr_gamma) from the SNR of the scheduler's own timesteps."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    timesteps = torch.tensor([0, 10, 100, 400, 700, 999])
    alphas = scheduler.alphas_cumprod.double()[timesteps]
    snr = (alphas / (1 - alphas)).numpy()
    ew, *_ = errors(6, seed=3)
    weights = min_snr_weights(compute_snr(scheduler, timesteps).double(), 5.0, prediction_type)
    denominator = snr + 1 if prediction_type == "v_prediction" else snr
    expected = np.minimum(snr, 5.0) / denominator
    assert np.allclose(weights.numpy(), expected, rtol=1e-6)
    assert (expected[snr > 5] < 1).all() and np.allclose(expected[snr <= 5], (snr / denominator)[snr <= 5])
    got = sft_loss(ew, weights).item()
    assert math.isclose(got, float(np.mean(expected * np.array(as_list(ew)))), rel_tol=1e-6)
    assert sft_loss(ew, torch.ones(6, dtype=ew.dtype)).item() == sft_loss(ew).item()


@pytest.mark.parametrize("beta", [0.1, 500.0, 2500.0, 5000.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_loss_matches_reference(beta, seed):
    ew, el, rw, rl = errors(9, seed=seed)
    got = dpo_loss(ew, el, rw, rl, beta).item()
    assert math.isclose(got, ref_dpo(*map(as_list, (ew, el, rw, rl)), beta), rel_tol=RTOL)


@pytest.mark.parametrize("b_w,b_l", [(6, 6), (3, 12), (5, 2)])
@pytest.mark.parametrize("beta", [0.1, 5000.0])
def test_rpo_loss_matches_reference_square_and_non_square(b_w, b_l, beta):
    ew, el, rw, rl = errors(b_w, seed=b_w * 10 + b_l, b_l=b_l)
    W = random_weights(b_w, b_l, seed=b_l)
    got = rpo_loss(ew, el, rw, rl, W, beta).item()
    want = ref_rpo(*map(as_list, (ew, el, rw, rl)), W.tolist(), beta)
    assert math.isclose(got, want, rel_tol=RTOL)


@pytest.mark.parametrize("beta", [0.1, 5000.0])
@pytest.mark.parametrize("b_w,b_l", [(8, 8), (4, 10)])
def test_orpo_and_orrpo_match_reference(beta, b_w, b_l):
    ew, el, _, _ = errors(b_w, seed=3, b_l=b_l)
    lam = 0.3
    if b_w == b_l:
        want = ref_orpo(as_list(ew), as_list(el), beta, lam)
        assert math.isclose(orpo_loss(ew, el, beta, lam).item(), want, rel_tol=RTOL)
    W = random_weights(b_w, b_l, seed=4)
    got = orrpo_loss(ew, el, W, beta, lam).item()
    assert math.isclose(got, ref_orrpo(as_list(ew), as_list(el), W.tolist(), beta, lam), rel_tol=RTOL)


def test_rpo_gradients_match_analytic_reference():
    """d/d e(w_i) = (beta/2)/B sum_j W_ij sigmoid(-logit_ij); d/d e(l_j) = -(beta/2)/B sum_i W_ij sigmoid(-logit_ij)."""
    beta = 5000.0
    ew, el, rw, rl = errors(4, seed=5, b_l=6)
    W = random_weights(4, 6, seed=6)
    ew.requires_grad_(True)
    el.requires_grad_(True)
    rpo_loss(ew, el, rw, rl, W, beta).backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    gw, gl = np.zeros(4), np.zeros(6)
    for i in range(4):
        for j in range(6):
            logit = -(beta / 2) * ((ew[i].item() - rw[i].item()) - (el[j].item() - rl[j].item()))
            g = W[i, j].item() * sig(-logit) * (beta / 2) / 4
            gw[i] += g
            gl[j] -= g
    np.testing.assert_allclose(ew.grad.numpy(), gw, rtol=1e-9)
    np.testing.assert_allclose(el.grad.numpy(), gl, rtol=1e-9)


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rpo_with_identity_weights_equals_dpo_exactly(dtype):
    ew, el, rw, rl = (t.to(dtype) for t in errors(8, seed=7))
    eye = torch.eye(8, dtype=dtype)
    for beta in (0.1, 5000.0):
        assert torch.equal(rpo_loss(ew, el, rw, rl, eye, beta), dpo_loss(ew, el, rw, rl, beta))


def test_orrpo_with_identity_weights_equals_orpo():
    ew, el, _, _ = errors(8, seed=8)
    eye = torch.eye(8, dtype=torch.float64)
    for beta in (0.1, 5000.0):
        want = orpo_loss(ew, el, beta, 0.5)
        torch.testing.assert_close(orrpo_loss(ew, el, eye, beta, 0.5), want, rtol=RTOL, atol=0)


def test_rpo_weight_sits_outside_the_log_sigmoid():
    """Uniform 1/B weights outside the log-sigmoid give the mean over all pairs, not LLM RPO's weight-inside form."""
    beta = 5000.0
    ew, el, rw, rl = errors(4, seed=9)
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    all_pairs = sum(
        ref_nls(-(beta / 2) * ((ew[i] - rw[i]) - (el[j] - rl[j])).item()) for i in range(4) for j in range(4)
    ) / 16
    assert math.isclose(rpo_loss(ew, el, rw, rl, uniform, beta).item(), all_pairs, rel_tol=RTOL)


# ----------------------------------------------------------------------------- RPO weights


def test_rpo_weights_match_reference_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(10)
    emb_w = torch.randn(5, 16, generator=g, dtype=torch.float64)
    emb_l = torch.randn(7, 16, generator=g, dtype=torch.float64)
    for tau in (0.01, 0.1, 1.0, 5.0):
        W = rpo_weights(emb_w, emb_l, tau)
        assert W.shape == (5, 7)
        np.testing.assert_allclose(W.numpy(), ref_weights(emb_w.numpy(), emb_l.numpy(), tau), rtol=1e-9)
        np.testing.assert_allclose(W.sum(dim=1).numpy(), np.ones(5), rtol=1e-12)


def test_rpo_weights_two_by_two_by_hand():
    # w0 = (1, 0), w1 = (0, 1); l0 = (1, 0), l1 = (1, 1) (unnormalised on purpose).
    # cos: [[1, 1/sqrt2], [0, 1/sqrt2]] -> D = [[0, 1 - 1/sqrt2], [1, 1 - 1/sqrt2]]; tau = 1.
    emb_w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    emb_l = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    a = 1 - 1 / math.sqrt(2)
    w00 = 1 / (1 + math.exp(-a))  # exp(-0) / (exp(-0) + exp(-a))
    w10 = math.exp(-1) / (math.exp(-1) + math.exp(-a))
    want = [[w00, 1 - w00], [w10, 1 - w10]]
    np.testing.assert_allclose(rpo_weights(emb_w, emb_l, 1.0).numpy(), want, rtol=1e-12)


def test_rpo_weights_low_tau_one_hot_high_tau_uniform():
    g = torch.Generator().manual_seed(11)
    emb_l = torch.randn(6, 32, generator=g, dtype=torch.float64)
    # Each winner is a slightly perturbed copy of a different loser.
    target = torch.tensor([3, 0, 5, 1])
    emb_w = emb_l[target] + 0.05 * torch.randn(4, 32, generator=g, dtype=torch.float64)
    sharp = rpo_weights(emb_w, emb_l, 1e-3)
    torch.testing.assert_close(sharp, torch.eye(6, dtype=torch.float64)[target], atol=1e-6, rtol=0)
    flat = rpo_weights(emb_w, emb_l, 1e4)
    torch.testing.assert_close(flat, torch.full((4, 6), 1 / 6, dtype=torch.float64), atol=1e-4, rtol=0)


def test_rpo_weights_low_precision_inputs_and_bad_tau():
    emb = torch.randn(3, 8).to(torch.float16)
    W = rpo_weights(emb, emb, 0.01)
    assert W.dtype == torch.float32 and torch.isfinite(W).all()
    with pytest.raises(ValueError):
        rpo_weights(emb, emb, 0.0)


# ----------------------------------------------------------------------------- embeddings


def test_combine_embeddings_modes():
    g = torch.Generator().manual_seed(12)
    img = torch.randn(4, 8, generator=g, dtype=torch.float64)
    txt = torch.randn(4, 8, generator=g, dtype=torch.float64)
    ni, nt = ref_unit(img.numpy()), ref_unit(txt.numpy())
    want = {
        "image": ni,
        "text": nt,
        "mean": ref_unit(ni + nt),
        "concat": ref_unit(np.concatenate([ni, nt], axis=1)),
    }
    for mode, expected in want.items():
        np.testing.assert_allclose(combine_embeddings(img, txt, mode).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(combine_embeddings(img, txt).numpy(), want["mean"], rtol=1e-12)
    # concat's cosine is the average of the image and text cosines
    u = combine_embeddings(img, txt, "concat")
    assert math.isclose(
        float(u[0] @ u[1]), (ref_cos(img[0], img[1]) + ref_cos(txt[0], txt[1])) / 2, rel_tol=1e-12
    )
    with pytest.raises(ValueError):
        combine_embeddings(img, txt, "sum")


# ----------------------------------------------------------------------------- signs and gradients


def test_dpo_gradient_direction():
    ew, el, rw, rl = errors(6, seed=13)
    leaves = [t.clone().requires_grad_(True) for t in (ew, el, rw, rl)]
    dpo_loss(*leaves, beta=5000.0).backward()
    g_ew, g_el, g_rw, g_rl = (t.grad for t in leaves)
    assert (g_ew > 0).all() and (g_el < 0).all() and (g_rw < 0).all() and (g_rl > 0).all()
    # Lowering the policy's winner error relative to the reference lowers the loss.
    base = dpo_loss(ew, el, rw, rl, 5000.0)
    assert dpo_loss(ew - 1e-4, el, rw, rl, 5000.0) < base
    assert dpo_loss(ew + 1e-4, el, rw, rl, 5000.0) > base


def test_orpo_sign_winner_denoised_better_lowers_loss():
    beta, lam = 20.0, 0.5  # e(l) - e(w) ~ 0.05 here; a larger beta saturates the sigmoid below float64 resolution
    ew, el, _, _ = errors(6, seed=14)
    ew = ew.clone().requires_grad_(True)
    el = el.clone().requires_grad_(True)
    orpo_loss(ew, el, beta, lam).backward()
    pref_grad_w = ew.grad - 1 / 6  # remove the SFT term's d/d e(w_i) = 1/B
    assert (pref_grad_w > 0).all() and (el.grad < 0).all()
    with torch.no_grad():
        base = orpo_loss(ew, el, beta, lam)
        assert orpo_loss(ew - 1e-4, el, beta, lam) < base
        # The preference term alone: below log 2 when every winner is denoised better, above when worse.
        better = orpo_loss(el - 1e-3, el, beta, 1.0) - (el - 1e-3).mean()
        worse = orpo_loss(el + 1e-3, el, beta, 1.0) - (el + 1e-3).mean()
        assert better < math.log(2) < worse


def test_gradients_reach_errors_but_not_weights():
    ew, el, rw, rl = errors(4, seed=15, b_l=8)
    ew.requires_grad_(True)
    el.requires_grad_(True)
    emb_w = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    emb_l = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    W = rpo_weights(emb_w, emb_l, 1.0)
    (rpo_loss(ew, el, rw, rl, W, 5000.0) + orrpo_loss(ew, el, W, 5000.0, 0.5)).backward()
    assert ew.grad is not None and ew.grad.abs().sum() > 0
    assert el.grad is not None and el.grad.abs().sum() > 0
    assert emb_w.grad is None and emb_l.grad is None
    leaf_W = random_weights(4, 8, seed=0).requires_grad_(True)
    rpo_loss(ew.detach().requires_grad_(True), el, rw, rl, leaf_W, 5000.0).backward()
    assert leaf_W.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_stay_finite(dtype):
    """beta 5000 with error differences of 1.0 gives logits of +-2500, where log(sigmoid(x)) is -inf."""
    beta = 5000.0
    assert torch.isinf(torch.log(torch.sigmoid(torch.tensor(-2500.0, dtype=dtype))))
    ew = torch.tensor([1.0, 0.0], dtype=dtype, requires_grad=True)
    el = torch.tensor([0.0, 1.0], dtype=dtype, requires_grad=True)
    zero = torch.zeros(2, dtype=dtype)
    W = torch.full((2, 2), 0.5, dtype=dtype)
    losses = {
        "dpo": dpo_loss(ew, el, zero, zero, beta),
        "rpo": rpo_loss(ew, el, zero, zero, W, beta),
        "orpo": orpo_loss(ew, el, beta, 1.0),
        "orrpo": orrpo_loss(ew, el, W, beta, 1.0),
    }
    # DPO: pair 0 has logit -2500 (loss 2500), pair 1 has logit +2500 (loss ~0) -> mean 1250.
    assert math.isclose(losses["dpo"].item(), 1250.0, rel_tol=1e-6)
    for name, loss in losses.items():
        assert torch.isfinite(loss), name
        ew.grad = el.grad = None
        loss.backward()
        assert torch.isfinite(ew.grad).all() and torch.isfinite(el.grad).all(), name


def test_shape_errors():
    a = torch.zeros(4)
    with pytest.raises(ValueError):
        dpo_loss(a[:, None], a, a, a, 1.0)  # (B, 1) would silently broadcast to (B, B)
    with pytest.raises(ValueError):
        orpo_loss(a, torch.zeros(3), 1.0, 1.0)
    with pytest.raises(ValueError):
        rpo_loss(a, torch.zeros(6), a, torch.zeros(6), torch.eye(4), 1.0)
    with pytest.raises(ValueError):
        rpo_loss(a, torch.zeros(6), a, torch.zeros(5), torch.zeros(4, 6), 1.0)


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_reference():
    beta = 5000.0
    ew, el, rw, rl = errors(10, seed=16)
    m = preference_metrics(ew.requires_grad_(True), el, rw, rl, beta)
    assert all(isinstance(v, float) for v in m.values())
    r_w = [-(beta / 2) * (a - b) for a, b in zip(as_list(ew), as_list(rw))]
    r_l = [-(beta / 2) * (a - b) for a, b in zip(as_list(el), as_list(rl))]
    logits = [a - b for a, b in zip(r_w, r_l)]
    mean = sum(logits) / 10
    want = {
        "implicit_acc": sum(x > 0 for x in logits) / 10,
        "reward_w": sum(r_w) / 10,
        "reward_l": sum(r_l) / 10,
        "reward_margin": mean,
        "logit_mean": mean,
        "logit_std": math.sqrt(sum((x - mean) ** 2 for x in logits) / 10),
        "mse_w": sum(as_list(ew)) / 10,
        "mse_l": sum(as_list(el)) / 10,
        "ref_mse_w": sum(as_list(rw)) / 10,
        "ref_mse_l": sum(as_list(rl)) / 10,
    }
    assert set(m) == set(want)
    for key, value in want.items():
        assert math.isclose(m[key], value, rel_tol=1e-9, abs_tol=1e-12), key


def test_metrics_accuracy_extremes():
    ref = torch.full((5,), 0.1, dtype=torch.float64)
    better, worse = ref - 0.01, ref + 0.01
    assert preference_metrics(better, ref, ref, ref, 5000.0)["implicit_acc"] == 1.0
    assert preference_metrics(ref, worse, ref, ref, 5000.0)["implicit_acc"] == 1.0
    assert preference_metrics(worse, ref, ref, ref, 5000.0)["implicit_acc"] == 0.0
    assert preference_metrics(ref, ref, ref, ref, 5000.0)["implicit_acc"] == 0.0  # logit 0 counts as wrong
    one = preference_metrics(better[:1], ref[:1], ref[:1], ref[:1], 5000.0)
    assert one["logit_std"] == 0.0


# ----------------------------------------------------------------------------- RPO: batch order, tau -> 0, signs


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_permuting_the_batch_leaves_rpo_and_orrpo_unchanged(tau):
    """Reordering the pairs (winner i with its loser i and its weight row and column) changes no loss;
    neither does reordering the losers alone (columns of W with them), e.g. another gather order."""
    beta, lam, b = 5000.0, 0.5, 7
    ew, el, rw, rl = errors(b, seed=20)
    g = torch.Generator().manual_seed(21)
    emb_w = torch.randn(b, 16, generator=g, dtype=torch.float64)
    emb_l = torch.randn(b, 16, generator=g, dtype=torch.float64)
    W = rpo_weights(emb_w, emb_l, tau)
    rpo = rpo_loss(ew, el, rw, rl, W, beta).item()
    orrpo = orrpo_loss(ew, el, W, beta, lam).item()
    assert math.isclose(rpo, ref_rpo(*map(as_list, (ew, el, rw, rl)), W.tolist(), beta), rel_tol=RTOL)
    for seed in range(3):
        p = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
        Wp = rpo_weights(emb_w[p], emb_l[p], tau)  # the weights of the reordered batch
        torch.testing.assert_close(Wp, W[p][:, p], rtol=1e-12, atol=0)
        assert math.isclose(rpo_loss(ew[p], el[p], rw[p], rl[p], Wp, beta).item(), rpo, rel_tol=RTOL)
        assert math.isclose(orrpo_loss(ew[p], el[p], Wp, beta, lam).item(), orrpo, rel_tol=RTOL)
        q = torch.randperm(b, generator=torch.Generator().manual_seed(seed + 10))
        Wq = rpo_weights(emb_w, emb_l[q], tau)
        assert math.isclose(rpo_loss(ew, el[q], rw, rl[q], Wq, beta).item(), rpo, rel_tol=RTOL)
    # Not vacuous: pairing each winner with another pair's loser (without moving the weights) changes it.
    shifted = torch.roll(torch.arange(b), 1)
    assert not math.isclose(rpo_loss(ew, el[shifted], rw, rl[shifted], W, beta).item(), rpo, rel_tol=1e-6)


def test_rpo_weights_tend_to_the_identity_as_tau_goes_to_0_when_the_diagonal_is_nearest():
    g = torch.Generator().manual_seed(22)
    emb_l = torch.randn(6, 32, generator=g, dtype=torch.float64)
    emb_w = emb_l + 0.3 * torch.randn(6, 32, generator=g, dtype=torch.float64)  # own loser nearest, not identical
    cos = torch.nn.functional.normalize(emb_w, dim=1) @ torch.nn.functional.normalize(emb_l, dim=1).T
    assert torch.equal(cos.argmax(dim=1), torch.arange(6)) and (cos.diagonal() < 1 - 1e-3).all()
    eye = torch.eye(6, dtype=torch.float64)
    distances = []
    for tau in (1.0, 0.1, 0.01, 1e-3, 1e-4):
        W = rpo_weights(emb_w, emb_l, tau)
        np.testing.assert_allclose(W.sum(dim=1).numpy(), np.ones(6), rtol=1e-12)
        assert (W.diagonal() == W.max(dim=1).values).all()  # the diagonal carries each row's largest weight
        distances.append((W - eye).abs().max().item())
    assert all(a > b for a, b in zip(distances, distances[1:])) and distances[-1] < 1e-12
    ew, el, rw, rl = errors(6, seed=23)
    for beta in (0.1, 5000.0):
        W = rpo_weights(emb_w, emb_l, 1e-4)
        want = ref_dpo(*map(as_list, (ew, el, rw, rl)), beta)
        assert math.isclose(rpo_loss(ew, el, rw, rl, W, beta).item(), want, rel_tol=1e-10)
        assert math.isclose(dpo_loss(ew, el, rw, rl, beta).item(), want, rel_tol=RTOL)


@pytest.mark.parametrize("b_w,b_l", [(5, 5), (3, 8)])
def test_rpo_and_orrpo_gradient_signs(b_w, b_l):
    """Lowering a winner's policy error lowers the loss, lowering a loser's raises it (every W_ij > 0); the
    reference errors act the other way round."""
    beta = 5000.0
    ew, el, rw, rl = errors(b_w, seed=24, b_l=b_l)
    W = random_weights(b_w, b_l, seed=25)
    leaves = [t.clone().requires_grad_(True) for t in (ew, el, rw, rl)]
    rpo_loss(*leaves, W, beta).backward()
    g_ew, g_el, g_rw, g_rl = (t.grad for t in leaves)
    assert (g_ew > 0).all() and (g_el < 0).all() and (g_rw < 0).all() and (g_rl > 0).all()
    base = rpo_loss(ew, el, rw, rl, W, beta)
    for i in range(b_w):
        lower = ew.clone()
        lower[i] -= 1e-4
        assert rpo_loss(lower, el, rw, rl, W, beta) < base
    for j in range(b_l):
        lower = el.clone()
        lower[j] -= 1e-4
        assert rpo_loss(ew, lower, rw, rl, W, beta) > base
    ew_, el_ = ew.clone().requires_grad_(True), el.clone().requires_grad_(True)
    orrpo_loss(ew_, el_, W, 20.0, 0.5).backward()
    assert (ew_.grad - 1 / b_w > 0).all() and (el_.grad < 0).all()  # minus the SFT term's 1/B


def test_sft_gradient_lowers_every_winner_error():
    ew, *_ = errors(5, seed=26)
    ew.requires_grad_(True)
    sft_loss(ew).backward()
    torch.testing.assert_close(ew.grad, torch.full((5,), 1 / 5, dtype=torch.float64), rtol=RTOL, atol=0)
