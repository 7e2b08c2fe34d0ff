from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipseg.tcnn.gmm import GMMConfig, assign, fit_gmm, load_gmm, save_gmm


def blobs(k: int = 3, per: int = 80, dims: int = 10) -> np.ndarray:
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 1, (k, dims))
    return np.vstack([rng.normal(centre, 0.03, (per, dims)) for centre in centres])


def test_auto_chooses_the_true_k_by_bic() -> None:
    mixture, table = fit_gmm(blobs(k=3), GMMConfig(k="auto", k_range=(1, 6), n_init=2))
    assert mixture.n_components == 3
    assert [row["k"] for row in table] == [1, 2, 3, 4, 5, 6]
    assert min(table, key=lambda row: row["bic"])["k"] == 3


def test_fixed_k_and_bad_values() -> None:
    mixture, table = fit_gmm(blobs(), GMMConfig(k=5, n_init=1))
    assert mixture.n_components == 5 and len(table) == 1
    with pytest.raises(ValueError, match="positive integer"):
        GMMConfig(k=0).candidates()
    with pytest.raises(ValueError, match="k_range"):
        GMMConfig(k="auto", k_range=(4, 2)).candidates()
    with pytest.raises(ValueError, match="covariance_type"):
        fit_gmm(blobs(), GMMConfig(k=2, covariance_type="weird"))


@pytest.mark.parametrize("covariance_type", ["diag", "full", "tied", "spherical"])
def test_save_load_round_trip_without_pickle(tmp_path: Path, covariance_type: str) -> None:
    features = blobs()
    mixture, _ = fit_gmm(features, GMMConfig(k=3, covariance_type=covariance_type, n_init=1))
    path = tmp_path / "gmm.npz"
    save_gmm(path, mixture)
    with np.load(path, allow_pickle=False) as stored:  # would raise if anything were pickled
        assert set(stored.files) >= {"weights", "means", "precisions_cholesky"}
    loaded = load_gmm(path)
    np.testing.assert_array_equal(assign(loaded, features), assign(mixture, features))
    np.testing.assert_allclose(loaded.predict_proba(features), mixture.predict_proba(features), atol=1e-10)


def test_copies_follow_their_source_crop() -> None:
    from lipseg.tcnn.gmm import assign_by_source

    features = blobs(k=2, per=10)
    mixture, _ = fit_gmm(features, GMMConfig(k=2, n_init=1))
    sources = np.array([f"face{i}" for i in range(20)] * 2)
    copy_index = np.array([0] * 20 + [1] * 20)
    shuffled = np.vstack([features, features[::-1]])  # the copies look like other faces
    labels = assign_by_source(mixture, shuffled, sources, copy_index)
    np.testing.assert_array_equal(labels[20:], labels[:20])
    np.testing.assert_array_equal(labels[:20], assign(mixture, features))
    with pytest.raises(ValueError, match="no plain crop"):
        assign_by_source(mixture, shuffled, sources, np.ones(40, int))


def test_k_is_chosen_on_one_crop_per_face_not_on_its_jittered_copies() -> None:
    """Jittered copies of a face are near-duplicates: counted as independent samples they shrink BIC's
    penalty and make K grow with the augmentation. K is chosen on the plain crops, then fitted to all."""
    rng = np.random.default_rng(0)
    faces = blobs(k=3, per=20, dims=6) + rng.normal(0, 0.06, (60, 6))  # three lip states, spread-out faces
    copies = np.repeat(faces, 9, axis=0) + rng.normal(0, 0.004, (540, 6))  # nine jittered copies of each face
    config = GMMConfig(k="auto", k_range=(2, 8), n_init=1)
    on_copies, _ = fit_gmm(copies, config)
    chosen, table = fit_gmm(copies, config, select_on=faces)
    assert chosen.n_components == 3 < on_copies.n_components
    assert min(table, key=lambda row: row["bic"])["k"] == 3
    assert chosen.means_.shape == (3, 6) and len(assign(chosen, copies)) == 540
