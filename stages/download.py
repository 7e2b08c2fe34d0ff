"""Stage `download`: materialise the dataset named by params `data` under data/raw (Helen layout)."""

from __future__ import annotations

from pathlib import Path

from lipseg.datasets.sources import materialise
from lipseg.io import atomic_directory, load_params
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CACHE_DIR = Path("data/cache")


def main() -> None:
    params = load_params("data")
    with stage_run("download", params) as run:
        with atomic_directory(RAW_DIR) as staging:
            summary = materialise(params, staging, CACHE_DIR)
        run.log_numbers(summary)
        run.log_dict(summary, "download_summary.json")
    print(f"download: {summary}")


if __name__ == "__main__":
    main()
