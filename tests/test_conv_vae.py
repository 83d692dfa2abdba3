"""ConvVAE: image checks and loaders, every kind, a per-member reference, HBE tuning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ensemblevi as ev
from ensemblevi.data._images import check_images, load_images
from ensemblevi.model import ConvVAE

KINDS = ["single", "deep", "batch", "hyperbatch", "mcdropout"]


@pytest.fixture(scope="module")
def digits():
    images, labels = ev.data.digits()
    return images[:200], labels[:200]


def test_check_images_names_the_problem(tmp_path):
    good = np.random.default_rng(0).random((5, 8, 8))
    assert check_images(good).dtype == np.float32
    with pytest.raises(ValueError, match="3-D"):
        check_images(good[0])
    with pytest.raises(ValueError, match="empty"):
        check_images(good[:0])
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        check_images(good * 255)
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_images(bad)
    # loaders: .npy, .npz with labels; the files are only read
    np.save(tmp_path / "x.npy", good)
    images, labels = load_images(tmp_path / "x.npy")
    assert labels is None and np.allclose(images, good)
    np.savez(tmp_path / "x.npz", pixels=good, labels=np.arange(5))
    images, labels = load_images(tmp_path / "x.npz")
    assert np.allclose(images, good) and list(labels) == list(range(5))
    with pytest.raises(KeyError, match="pixels"):
        load_images(tmp_path / "x.npz", key="nope")
    with pytest.raises(ValueError, match=r"\.npy or \.npz"):
        (tmp_path / "x.png").write_bytes(b"")
        load_images(tmp_path / "x.png")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_and_scores(digits, kind):
    images, _ = digits
    vae = ConvVAE(images, ensemble=kind, n_members=3, channels=(4, 8), n_hidden=16, seed=0)
    vae.train(max_epochs=2, batch_size=32, progress=False)
    k = 1 if kind == "single" else 3
    assert vae.is_trained and list(vae.history["epoch"]) == [0, 1]
    members = vae.log_likelihood(images[:10], n_samples=8, return_members=True)
    mixture = vae.log_likelihood(images[:10], n_samples=8)
    assert members.shape == (k, 10) and mixture.shape == (10,)
    assert np.all(mixture >= members.mean(0) - 1e-4) and np.all(mixture <= members.max(0) + 1e-4)
    assert np.all(members < 0)  # binary pixels: probabilities below one
    probs = vae.member_probabilities(images[:10])
    assert probs.shape == (k, 10, 8, 8) and probs.min() >= 0 and probs.max() <= 1
    assert vae.reconstruction_error(images[:10]).shape == (10,)
    score = vae.epistemic_score(images[:10])
    if kind == "single":
        assert vae.diversity(images[:10]) == 0 and np.allclose(score, 0)
    else:  # members (or MC-dropout masks) disagree
        assert vae.diversity(images[:10]) > 0 and (score > 0).all()
    with pytest.raises(ValueError, match="built for"):
        vae.log_likelihood(np.zeros((2, 6, 6)))


def test_deep_members_match_a_per_member_reference(digits):
    images, _ = digits
    vae = ConvVAE(images, ensemble="deep", n_members=3, channels=(4, 8), n_hidden=16, seed=1)
    m = vae.module
    x = torch.from_numpy(images[:7]).double()
    m.double().eval()
    qz = m.encode(x)
    for k in range(3):  # each member alone, written out with torch's functional ops
        h = F.relu(F.conv2d(x.unsqueeze(1), m.enc1.weight[k], m.enc1.bias[k], 2, 1))
        h = F.relu(F.conv2d(h, m.enc2.weight[k], m.enc2.bias[k], 2, 1)).flatten(1)
        h = F.relu(h @ m.enc_dense.weight[k] + m.enc_dense.bias[k])
        mu, logvar = (h @ m.enc_head.weight[k] + m.enc_head.bias[k]).chunk(2, -1)
        torch.testing.assert_close(qz.loc[k], mu)
        torch.testing.assert_close(qz.scale[k], torch.exp(0.5 * logvar) + 1e-4)
        z = torch.randn(7, m.n_latent, dtype=torch.float64)
        h = F.relu(z @ m.dec_dense.weight[k] + m.dec_dense.bias[k])
        h = F.relu(h @ m.dec_expand.weight[k] + m.dec_expand.bias[k]).reshape(7, 8, 2, 2)
        h = F.relu(F.conv_transpose2d(h, m.dec1.weight[k], m.dec1.bias[k], 2, 1, 1))
        ref = F.conv_transpose2d(h, m.dec_head.weight[k], m.dec_head.bias[k], 2, 1, 1)[:, 0]
        zs = torch.zeros(1, 3, 7, m.n_latent, dtype=torch.float64)
        zs[0, k] = z
        torch.testing.assert_close(m.decode(zs)[0, k], ref)


def test_hyperbatch_tunes_and_records(digits):
    images, _ = digits
    vae = ConvVAE(images, ensemble="hyperbatch", n_members=2, channels=(4, 8), n_hidden=16, seed=0)
    vae.train(max_epochs=2, batch_size=32, tune_lr=0.05, progress=False)
    table = vae.get_hyperparameters()
    assert len(table) == 2 * 6 and (table["low"] < table["high"]).all()
    traj = vae.hyper_trajectory_
    n_steps = 2 * int(np.ceil(180 / 32))
    assert traj["step"].nunique() == 1 + n_steps // 3
    first = traj[traj["step"] == 0]["low"].to_numpy()
    assert not np.allclose(first, table["low"].to_numpy())
    with pytest.raises(ValueError, match="validation_fraction"):
        vae.train(max_epochs=1, validation_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match="hyperbatch"):
        ConvVAE(images, ensemble="deep", n_members=2).get_hyperparameters()
