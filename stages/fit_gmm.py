"""Stage `fit_gmm`: a Gaussian mixture (EM) over the FC5 features; K fixed or chosen by BIC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipseg.crop import CropSet
from lipseg.gmm import GMMConfig, assign, assign_by_source, fit_gmm, save_gmm
from lipseg.io import atomic_directory, load_npz, load_params, write_json_atomic, write_png_atomic, write_text_atomic
from lipseg.masks import overlay_grid
from lipseg.plots import bic_curve
from lipseg.tracking import stage_run

FEATURES = Path("data/features/train_fc5.npz")
CROPS_DIR = Path("data/crops")
GMM_FILE = Path("models/gmm/gmm.npz")
REPORT_DIR = Path("reports/fit_gmm")
BIC_CSV = Path("reports/fit_gmm_bic.csv")


def main() -> None:
    params = load_params("gmm")
    k = params["k"] if params["k"] == "auto" else int(params["k"])
    config = GMMConfig(
        k=k, k_range=tuple(params["k_range"]), covariance_type=str(params["covariance_type"]),
        reg_covar=float(params["reg_covar"]), n_init=int(params["n_init"]), seed=int(params["seed"]),
    )
    with stage_run("fit_gmm", params) as run:
        stored = load_npz(FEATURES)
        features, copy_index = stored["fc5"], stored["copy_index"]
        fit_on = str(params["fit_on"])
        if fit_on not in ("plain", "all"):
            raise ValueError(f"gmm.fit_on must be 'plain' or 'all', got {fit_on!r}")
        # plain: fit on one unjittered crop per face, so clusters follow lip states, not the augmentation.
        mixture, table = fit_gmm(features[copy_index == 0] if fit_on == "plain" else features, config)
        labels = assign_by_source(mixture, features, stored["names"], copy_index) if fit_on == "plain" else assign(mixture, features)
        sizes = np.bincount(labels, minlength=mixture.n_components).tolist()
        save_gmm(GMM_FILE, mixture)
        write_text_atomic(BIC_CSV, "k,bic,aic\n" + "".join(f"{row['k']},{row['bic']:.3f},{row['aic']:.3f}\n" for row in table))
        crops = CropSet.from_arrays(load_npz(CROPS_DIR / "train.npz"))
        rng = np.random.default_rng(config.seed)
        with atomic_directory(REPORT_DIR) as staging:
            bic_curve(table, mixture.n_components, staging / "bic.png")
            for cluster in range(mixture.n_components):
                members = np.flatnonzero(labels == cluster)
                shown = rng.choice(members, size=min(len(members), int(params["montage_per_cluster"])), replace=False) if len(members) else members
                tiles = [crops.images[index] for index in sorted(shown)]
                montage = overlay_grid(tiles, columns=6, tile_size=64, captions=None) if tiles else np.zeros((64, 64, 3), np.uint8)
                write_png_atomic(staging / f"cluster_{cluster}.png", montage)
            write_json_atomic(staging / "clusters.json", {"k": mixture.n_components, "sizes": sizes, "bic": table, "selection": "bic" if k == "auto" else "fixed"})
        run.log_metrics({"k": mixture.n_components, **{f"cluster_{i}_size": size for i, size in enumerate(sizes)}}, to_parent=True)
        for row in table:
            run.log_metrics({"bic": row["bic"], "aic": row["aic"]}, step=row["k"])
        run.log_artifacts(REPORT_DIR, "fit_gmm")
    print(f"fit_gmm: K={mixture.n_components} ({'by BIC' if k == 'auto' else 'fixed'}), cluster sizes {sizes}")
    if k == "auto" and mixture.n_components == config.k_range[1]:
        print(f"fit_gmm: warning: BIC chose the largest K in gmm.k_range {list(config.k_range)}; a wider range may fit better")


if __name__ == "__main__":
    main()
