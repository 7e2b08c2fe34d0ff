"""Stage `download`: materialise the dataset named by params `data` under data/raw (Helen layout)."""

from __future__ import annotations

from lipseg.core import paths
from lipseg.core.files import atomic_directory, write_json_atomic
from lipseg.core.params import load_params, run_stage
from lipseg.core.tracking import stage_run
from lipseg.data.sources import DATASET_FILE, DataParams, materialise


def main() -> None:
    section = load_params("data")
    params = DataParams.from_params(section, "data")
    with stage_run("download", section) as run:
        with atomic_directory(paths.RAW) as staging:
            summary = materialise(params, staging, paths.DOWNLOAD_CACHE)
            write_json_atomic(staging / DATASET_FILE, summary)  # models trained on it record where it came from
        run.log_numbers(summary)
        run.log_dict(summary, "download_summary.json")
    print(f"download: {summary}")


if __name__ == "__main__":
    run_stage(main)
