"""Benchmark: `lipseg predict` with its defaults against a plain dlib script, as whole processes on the
same photos: wall seconds, photos per second, the ratio, photos without a face, and start-up time.

    python bench/throughput.py [--photos ../shared/data/helen_sample/images] [--repeats 1]
                               [--out bench/results/throughput] [-- EXTRA lipseg predict ARGS]

The dlib script is what a user would write instead: HOG at upsample 0, the 68-point predictor on each
face, one JSON of points per photo. Both run as fresh processes (start-up included) on one folder;
start-up is timed separately on a single photo. Writes --out/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

DLIB_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
import cv2, dlib
models = Path(importlib.util.find_spec("face_recognition_models").origin).parent / "models"
detector = dlib.get_frontal_face_detector()
predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
source, out = Path(sys.argv[1]), Path(sys.argv[2])
photos = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
for photo in photos:
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    faces = [[[p.x, p.y] for p in predictor(rgb, box).parts()] for box in detector(rgb, 0)]
    (out / f"{photo.stem}.json").write_text(json.dumps({"faces": faces}))
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # lipseg predict exits 1 when some file failed; the rest is written
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def no_face(folder: Path, photos: list[Path]) -> int:
    return sum(1 for photo in photos if not json.loads((folder / f"{photo.stem}.json").read_text())["faces"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared/data/helen_sample/images")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command; the fastest counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/throughput")
    parser.add_argument("extra", nargs="*", help="extra `lipseg predict` arguments (after --)")
    args = parser.parse_args()
    photos = sorted(path for path in args.photos.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise SystemExit(f"no photos under {args.photos}")
    with tempfile.TemporaryDirectory(prefix="lipseg-throughput-") as scratch:
        scratch = Path(scratch)
        script = scratch / "dlib68.py"
        script.write_text(DLIB_SCRIPT)
        dlib_out, ours_out = scratch / "dlib", scratch / "ours"
        dlib_out.mkdir()
        dlib = [sys.executable, str(script), str(args.photos), str(dlib_out)]
        ours = [sys.executable, "-m", "lipseg", "predict", str(args.photos), "--out", str(ours_out), "--quiet"]
        ours += args.extra
        figures = {}
        for name, command in (("dlib", dlib), ("lipseg", ours)):
            seconds = min(timed(command) for _ in range(args.repeats))
            single = [part if part != str(args.photos) else str(photos[0]) for part in command]
            figures[name] = {
                "seconds": round(seconds, 2),
                "photos_per_second": round(len(photos) / seconds, 1),
                "ms_per_photo": round(1000 * seconds / len(photos), 1),
                "startup_seconds": round(min(timed(single) for _ in range(max(2, args.repeats))), 2),
                "no_face": no_face(dlib_out if name == "dlib" else ours_out, photos),
            }
    result = {
        "photos": len(photos),
        "folder": str(args.photos),
        "lipseg_arguments": args.extra,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        **figures,
        "throughput_ratio": round(figures["dlib"]["seconds"] / figures["lipseg"]["seconds"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
