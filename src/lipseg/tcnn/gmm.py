"""Gaussian mixture over FC5 features: fit with EM, choose K by BIC, save and load without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture

from lipseg.core.files import load_npz, write_npz_atomic

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


@dataclass(frozen=True)
class GMMConfig:
    k: int | str = "auto"  # an integer, or "auto" to choose by BIC over k_range
    k_range: tuple[int, int] = (2, 8)  # inclusive
    covariance_type: str = "diag"
    reg_covar: float = 1e-4
    n_init: int = 3
    max_iter: int = 300
    seed: int = 0

    def candidates(self) -> list[int]:
        if self.k == "auto":
            low, high = self.k_range
            if not 1 <= low <= high:
                raise ValueError(f"gmm.k_range must be 1 <= low <= high, got {self.k_range}")
            return list(range(low, high + 1))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"gmm.k must be a positive integer or 'auto', got {self.k!r}")
        return [self.k]


def _mixture(features: np.ndarray, k: int, config: GMMConfig) -> GaussianMixture:
    if k > len(features):
        raise ValueError(f"cannot fit {k} components to {len(features)} samples")
    return GaussianMixture(
        n_components=k,
        covariance_type=config.covariance_type,
        reg_covar=config.reg_covar,
        n_init=config.n_init,
        max_iter=config.max_iter,
        random_state=config.seed,
    ).fit(features)


def fit_gmm(
    features: np.ndarray, config: GMMConfig, select_on: np.ndarray | None = None
) -> tuple[GaussianMixture, list[dict[str, float]]]:
    """The mixture over `features` with the K of lowest BIC, and the BIC table.

    BIC's penalty grows with the number of samples it is told there are; jittered copies of a face are
    not independent samples, so K is chosen on `select_on` (one plain crop per face) when given, and
    the chosen K is then fitted to `features`."""
    if config.covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"gmm.covariance_type must be one of {COVARIANCE_TYPES}")
    features = np.asarray(features, np.float64)
    selection = features if select_on is None else np.asarray(select_on, np.float64)
    table, best, best_bic = [], None, np.inf
    for k in config.candidates():
        mixture = _mixture(selection, k, config)
        bic = float(mixture.bic(selection))
        table.append({"k": k, "bic": bic, "aic": float(mixture.aic(selection)), "converged": bool(mixture.converged_)})
        if bic < best_bic:
            best, best_bic = mixture, bic
    assert best is not None
    if select_on is not None:
        best = _mixture(features, best.n_components, config)
    return best, table


def full_precision_cholesky(mixture: GaussianMixture) -> np.ndarray:
    """(K, D, D) upper-triangular precision Cholesky factors, whatever the covariance type."""
    k, d = mixture.means_.shape
    factors = mixture.precisions_cholesky_
    kind = mixture.covariance_type
    if kind == "full":
        return factors.copy()
    if kind == "tied":
        return np.repeat(factors[None], k, axis=0)
    if kind == "diag":
        return np.stack([np.diag(row) for row in factors])
    return np.stack([np.eye(d) * value for value in factors])  # spherical


def save_gmm(path: Path, mixture: GaussianMixture) -> None:
    write_npz_atomic(
        path,
        covariance_type=np.array(mixture.covariance_type),
        weights=mixture.weights_,
        means=mixture.means_,
        covariances=mixture.covariances_,
        precisions_cholesky=mixture.precisions_cholesky_,
    )


def load_gmm(path: Path) -> GaussianMixture:
    """Rebuild a fitted GaussianMixture from its parameters (npz, no pickle)."""
    arrays = load_npz(path)
    kind = str(arrays["covariance_type"])
    mixture = GaussianMixture(n_components=len(arrays["weights"]), covariance_type=kind)
    mixture.weights_ = arrays["weights"]
    mixture.means_ = arrays["means"]
    mixture.covariances_ = arrays["covariances"]
    mixture.precisions_cholesky_ = arrays["precisions_cholesky"]
    if kind == "full":
        mixture.precisions_ = np.einsum("kij,klj->kil", mixture.precisions_cholesky_, mixture.precisions_cholesky_)
    elif kind == "tied":
        mixture.precisions_ = mixture.precisions_cholesky_ @ mixture.precisions_cholesky_.T
    else:
        mixture.precisions_ = mixture.precisions_cholesky_**2
    mixture.converged_ = True
    mixture.n_features_in_ = mixture.means_.shape[1]
    return mixture


def assign(mixture: GaussianMixture, features: np.ndarray) -> np.ndarray:
    return mixture.predict(np.asarray(features, np.float64)).astype(np.int64)


def assign_by_source(
    mixture: GaussianMixture, features: np.ndarray, sources: np.ndarray, copy_index: np.ndarray
) -> np.ndarray:
    """Each crop gets the cluster of its source image's plain (unjittered) crop, so the jittered and
    flipped copies of a face train the same head as the face itself (per-cluster augmentation)."""
    plain = np.flatnonzero(copy_index == 0)
    plain_labels = dict(zip(sources[plain].tolist(), assign(mixture, features[plain]).tolist())) if len(plain) else {}
    missing = set(sources.tolist()) - plain_labels.keys()
    if missing:
        raise ValueError(f"{len(missing)} sources have no plain crop (copy 0), e.g. {sorted(missing)[:3]}")
    return np.array([plain_labels[source] for source in sources.tolist()], np.int64)
