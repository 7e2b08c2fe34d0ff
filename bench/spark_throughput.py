"""Benchmark: `lipseg spark-predict` on a Spark master (default local[2]) against `lipseg predict`, as whole
processes on the same photos (wall seconds, photos per second, the time for one photo), and Spark's photos per
second in a warm session (JVM and Python workers started, the model loaded on them), as on a long-running cluster.

    python bench/spark_throughput.py [--photos DIR | --count 64] [--master local[2]] [--repeats 1]
                                     [--out bench/results/spark_throughput]

Without --photos, `--count` synthetic faces are generated (320x320 JPEG, as the tests make them). Both commands
use the release model (the Spark one packed as the photo-level MLflow model, once, outside the timing) with
their default options, and write their results to a temp folder. Start-up (interpreter, models, and for Spark
the JVM and its Python workers) shows in the time for a single photo. Writes --out/spark_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIPSEG = [sys.executable, "-m", "lipseg"]


def generate_photos(folder: Path, count: int) -> Path:
    import cv2

    from lipseg.data.synthetic import render_face

    folder.mkdir(parents=True)
    for index in range(count):
        image, _, _ = render_face(seed=11, index=index, image_size=128)
        cv2.imwrite(str(folder / f"face_{index:05d}.jpg"), cv2.resize(image, (320, 320), interpolation=cv2.INTER_CUBIC))
    return folder


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # both exit 1 when some photo failed; the others are written
        raise SystemExit(f"{' '.join(command[2:5])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def best_of(repeats: int, command: list[str], scratch: Path) -> float:
    """The fastest of `repeats` runs; each writes to a fresh folder (spark-predict wants a new one)."""
    seconds = []
    for repeat in range(repeats):
        out = scratch / f"out_{time.monotonic_ns()}_{repeat}"
        seconds.append(timed([*command, "--out", str(out)]))
    return min(seconds)


def warm_session_seconds(master: str, model: Path, single: Path, photos: Path, scratch: Path) -> dict[str, float]:
    """In this process: the session's start, a first pass on one photo (the Python workers start and load the
    model, which MLflow then keeps per worker), and the timed pass over all photos, read to written."""
    from lipseg.inference.spark import photo_udf, read_photos, score_photos, spark_session, write_results

    started = time.perf_counter()
    spark = spark_session(master)
    session = time.perf_counter() - started
    try:
        udf = photo_udf(spark, model)
        started = time.perf_counter()
        write_results(score_photos(read_photos(spark, [str(single)]), udf), str(scratch / "warm_single"), "parquet")
        first = time.perf_counter() - started
        started = time.perf_counter()
        write_results(score_photos(read_photos(spark, [str(photos)]), udf), str(scratch / "warm_all"), "parquet")
        scoring = time.perf_counter() - started
    finally:
        spark.stop()
    return {"session_start_s": session, "first_photo_s": first, "scoring_s": scoring}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: generate --count faces)")
    parser.add_argument("--count", type=int, default=64, help="generated photos when no --photos (default: 64)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: local[2])")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command; the fastest counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/spark_throughput")
    args = parser.parse_args()

    from lipseg.core.images import IMAGE_SUFFIXES
    from lipseg.inference.models import RELEASE_SEGMENTER, RELEASE_TCNN
    from lipseg.inference.photo_pyfunc import save_photo_model

    with tempfile.TemporaryDirectory(prefix="lipseg-spark-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        photos = args.photos or generate_photos(scratch / "photos", args.count)
        names = sorted(path for path in photos.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise SystemExit(f"no photos in {photos}")
        single = scratch / "single"
        single.mkdir()
        (single / names[0].name).write_bytes(names[0].read_bytes())
        model = save_photo_model(scratch / "photo_model", RELEASE_TCNN, RELEASE_SEGMENTER)
        commands = {
            "lipseg predict": [*LIPSEG, "predict", "--no-overlay", "--quiet"],
            f"spark-predict {args.master}": [*LIPSEG, "spark-predict", "--model", str(model), "--master", args.master],
        }
        rows = {}
        for label, command in commands.items():
            startup = best_of(args.repeats, [*command, str(single)], scratch)
            wall = best_of(args.repeats, [*command, str(photos)], scratch)
            rows[label] = {"seconds": wall, "photos_per_s": len(names) / wall, "one_photo_s": startup}
            # the photos beyond the first, over the time beyond one photo's run: the rate once started
            rows[label]["past_startup_photos_per_s"] = (
                (len(names) - 1) / wall_beyond if (wall_beyond := wall - startup) > 0 else None
            )
        warm = min(
            (
                warm_session_seconds(args.master, model, single, photos, scratch / f"warm_{repeat}")
                for repeat in range(args.repeats)
            ),
            key=lambda times: times["scoring_s"],
        )
    result = {
        "photos": len(names),
        "source": str(args.photos) if args.photos else f"{args.count} generated 320x320 faces",
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.platform(),
        "commands": {
            label: {key: None if value is None else round(value, 2) for key, value in row.items()}
            for label, row in rows.items()
        },
        "spark_warm_session": {key: round(value, 2) for key, value in warm.items()}
        | {"photos_per_s": round(len(names) / warm["scoring_s"], 2)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spark_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(names)} photos ({result['source']}), {result['cpu_cores']} CPU cores, "
        f"1-minute load {result['load_average_1min']:.1f}"
    )
    print(f"{'whole command':<28}{'seconds':>9}{'photos/s':>10}{'one photo s':>13}{'photos/s past start-up':>24}")
    for label, row in rows.items():
        print(
            f"{label:<28}{row['seconds']:>9.2f}{row['photos_per_s']:>10.2f}{row['one_photo_s']:>13.2f}"
            + (
                f"{rate:>24.2f}"
                if (rate := row["past_startup_photos_per_s"]) is not None
                else f"{'(start-up noise)':>24}"
            )
        )
    print(
        f"Spark {args.master}, warm session: {warm['scoring_s']:.2f} s for {len(names)} photos = "
        f"{len(names) / warm['scoring_s']:.2f} photos/s (session start {warm['session_start_s']:.2f} s, "
        f"first photo {warm['first_photo_s']:.2f} s)"
    )


if __name__ == "__main__":
    main()
