"""Stage `fit_gmm`: a Gaussian mixture (EM) over the FC5 features; K fixed or chosen by BIC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lipseg.core import paths
from lipseg.core.files import (
    atomic_directory,
    load_npz,
    write_json_atomic,
    write_png_atomic,
    write_text_atomic,
)
from lipseg.core.params import ParamsError, Section, load_params, param, run_stage, seed_param
from lipseg.core.tracking import stage_run
from lipseg.data.crops import CropSet
from lipseg.evaluation.overlays import overlay_grid
from lipseg.evaluation.plots import bic_csv, bic_curve
from lipseg.tcnn.gmm import GMMConfig, assign, assign_by_source, fit_gmm, save_gmm

REPORT_DIR = paths.REPORTS / "fit_gmm"
BIC_CSV = paths.REPORTS / "fit_gmm_bic.csv"


@dataclass(frozen=True)
class GmmParams(Section):
    k: int | Literal["auto"] = param("auto", low=1)  # an integer, or auto = choose K by BIC over k_range
    k_range: tuple[int, int] = param((2, 6), low=1)
    covariance_type: Literal["full", "diag", "spherical", "tied"] = "diag"
    fit_on: Literal["all", "plain"] = "all"  # all training crops | plain: one unjittered crop per face
    reg_covar: float = param(1e-4, low=0, low_open=True)
    n_init: int = param(3, low=1)
    seed: int = seed_param()
    montage_per_cluster: int = param(36, low=0)

    def check(self, name: str) -> None:
        if self.k_range[0] > self.k_range[1]:
            raise ParamsError(
                f"params.yaml: {name}.k_range must be [low, high] with low <= high, got {list(self.k_range)}"
            )

    def gmm_config(self) -> GMMConfig:
        return GMMConfig(
            k=self.k,
            k_range=self.k_range,
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            n_init=self.n_init,
            seed=self.seed,
        )


def main() -> None:
    section = load_params("gmm")
    params = GmmParams.from_params(section, "gmm")
    config = params.gmm_config()
    with stage_run("fit_gmm", section) as run:
        stored = load_npz(paths.FEATURES)
        features, copy_index = stored["fc5"], stored["copy_index"]
        # K is chosen on one plain crop per face (jittered copies are no independent samples for BIC);
        # plain: the mixture is fitted there too, so clusters follow lip states, not the augmentation.
        plain = params.fit_on == "plain"
        mixture, table = fit_gmm(
            features[copy_index == 0] if plain else features, config, select_on=features[copy_index == 0]
        )
        labels = (
            assign_by_source(mixture, features, stored["names"], copy_index) if plain else assign(mixture, features)
        )
        sizes = np.bincount(labels, minlength=mixture.n_components).tolist()
        crops = CropSet.load(paths.CROPS / "train.npz")
        rng = np.random.default_rng(config.seed)
        # Both folders are staged, and swapped in only once everything is made: a failure leaves the old ones.
        with atomic_directory(paths.GMM.parent) as model_staging, atomic_directory(REPORT_DIR) as staging:
            save_gmm(model_staging / paths.GMM.name, mixture)
            bic_curve(table, mixture.n_components, staging / "bic.png")
            for cluster in range(mixture.n_components):
                members = np.flatnonzero(labels == cluster)
                shown = (
                    rng.choice(members, size=min(len(members), params.montage_per_cluster), replace=False)
                    if len(members)
                    else members
                )
                tiles = [crops.images[index] for index in sorted(shown)]
                montage = (
                    overlay_grid(tiles, columns=6, tile_size=64, captions=None)
                    if tiles
                    else np.zeros((64, 64, 3), np.uint8)
                )
                write_png_atomic(staging / f"cluster_{cluster}.png", montage)
            write_json_atomic(
                staging / "clusters.json",
                {
                    "k": mixture.n_components,
                    "sizes": sizes,
                    "bic": table,
                    "selection": "bic" if params.k == "auto" else "fixed",
                },
            )
            write_text_atomic(BIC_CSV, bic_csv(table))
        run.log_metrics(
            {"k": mixture.n_components, **{f"cluster_{i}_size": size for i, size in enumerate(sizes)}}, to_parent=True
        )
        for row in table:
            run.log_metrics({"bic": row["bic"], "aic": row["aic"]}, step=row["k"])
        run.log_artifacts(REPORT_DIR, "fit_gmm")
    print(f"fit_gmm: K={mixture.n_components} ({'by BIC' if params.k == 'auto' else 'fixed'}), cluster sizes {sizes}")
    if params.k == "auto" and mixture.n_components == config.k_range[1]:
        print(
            f"fit_gmm: warning: BIC chose the largest K in gmm.k_range {list(config.k_range)}; "
            "a wider range may fit better"
        )


if __name__ == "__main__":
    run_stage(main)
