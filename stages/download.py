"""Stage `download`: materialise the dataset named by params `data` under data/raw (Helen layout)."""

from __future__ import annotations

from lipseg.core import paths
from lipseg.core.files import atomic_directory
from lipseg.core.params import load_params
from lipseg.core.tracking import stage_run
from lipseg.data.sources import DataParams, materialise


def main() -> None:
    section = load_params("data")
    params = DataParams.from_params(section, "data")
    with stage_run("download", section) as run:
        with atomic_directory(paths.RAW) as staging:
            summary = materialise(params, staging, paths.DOWNLOAD_CACHE)
        run.log_numbers(summary)
        run.log_dict(summary, "download_summary.json")
    print(f"download: {summary}")


if __name__ == "__main__":
    main()
