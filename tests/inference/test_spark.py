"""`lipseg spark-predict`: the photo model on a local Spark session answers as `lipseg predict` does."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.core.images import IMAGE_SUFFIXES
from lipseg.inference.cli import main
from lipseg.inference.spark import SparkScoringError, model_folder, read_path_list, spark_session, suffix_pattern

PHOTOS = 8


def generated_photos(folder: Path, count: int = PHOTOS) -> Path:
    """Synthetic faces, upscaled so that dlib's HOG detector finds them; one in a sub-folder."""
    from lipseg.data.synthetic import render_face

    (folder / "nested").mkdir(parents=True)
    for index in range(count):
        image, _, _ = render_face(seed=7, index=index, image_size=128)
        target = folder / ("nested" if index == 0 else "") / f"face_{index}.jpg"
        cv2.imwrite(str(target), cv2.resize(image, (320, 320), interpolation=cv2.INTER_CUBIC))
    (folder / "notes.txt").write_text("not a photo")  # not taken: photos are chosen by suffix
    return folder


def label_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:  # a palette PNG: the indices are the labels
        return np.asarray(image)


@pytest.mark.slow
def test_spark_predict_answers_as_lipseg_predict(
    tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture
) -> None:
    """The photo model logged to a store, looked up by URI and run by spark_udf on local[2]."""
    if shutil.which("java") is None and not Path(os.environ.get("JAVA_HOME", "/nonexistent"), "bin", "java").is_file():
        pytest.fail("no Java runtime on PATH: Spark needs one (.ci/ensure_system installs Debian's)", pytrace=False)
    import mlflow
    import pandas as pd

    from lipseg.inference.models import RELEASE_SEGMENTER, RELEASE_TCNN
    from lipseg.inference.photo_pyfunc import answer_mask, save_photo_model

    photos = generated_photos(tmp_path / "photos")
    model = save_photo_model(tmp_path / "photo_model", RELEASE_TCNN, RELEASE_SEGMENTER)
    mlflow.set_tracking_uri(mlflow_store)
    # this store's own experiment: an earlier test's active experiment id names one of another store
    mlflow.set_experiment("spark-predict")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model), "photo_model")
    uri = f"runs:/{run.info.run_id}/photo_model"
    spark_out, predict_out, json_out = tmp_path / "spark", tmp_path / "predict", tmp_path / "spark_json"
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"{photos / 'face_1.jpg'}\n{tmp_path / 'more'}\n")
    spark = spark_session("local[2]")  # shared by both runs, which leave a session they did not start running
    try:
        code = main(["spark-predict", str(photos), "--out", str(spark_out), "--model", uri, "--master", "local[2]"])
        assert code == 0, capsys.readouterr().err
        assert f"{PHOTOS} photos, " in capsys.readouterr().err
        # the release model packed by the command itself, inputs from a list, JSON lines, one bad photo
        code = main(["spark-predict", "--paths-from", str(listing), "--out", str(json_out), "--format", "json"])
        assert code == 1 and "broken.jpg: " in capsys.readouterr().err
    finally:
        spark.stop()
    assert main(["predict", str(photos), "--out", str(predict_out), "--no-overlay", "--quiet", "--jobs", "1"]) == 0

    results = pd.read_parquet(spark_out)
    assert len(results) == PHOTOS and set(results["error"]) == {""}
    faces_seen = 0
    for row in results.itertuples():
        relative = Path(re.sub(r"^file:", "", row.path)).resolve().relative_to(photos.resolve())
        expected = json.loads((predict_out / relative).with_suffix(".json").read_text())
        faces = json.loads(row.faces)
        assert len(faces) == len(expected["faces"]) and json.loads(row.image_size) == expected["image_size"]
        for face, wanted in zip(faces, expected["faces"]):
            np.testing.assert_allclose(face["lips"], wanted["lips"], atol=1e-4, rtol=0)
            assert face["box"] == wanted["box"] and face["cluster"] == wanted["cluster"]
        faces_seen += len(faces)
        mask = answer_mask(row._asdict())
        np.testing.assert_array_equal(mask, label_image((predict_out / relative).with_suffix(".png")))
    assert faces_seen >= PHOTOS - 1  # the generated faces are found: the comparison covers real answers

    listed = pd.concat([pd.read_json(part, lines=True, dtype=False) for part in sorted(json_out.glob("part-*.json"))])
    by_name = {Path(path).name: row for path, row in zip(listed["path"], listed.itertuples())}
    assert sorted(by_name) == ["broken.jpg", "face_1.jpg"] and by_name["broken.jpg"].error
    same = results[results["path"].str.endswith("/face_1.jpg")].iloc[0]
    assert by_name["face_1.jpg"].faces == same["faces"] and by_name["face_1.jpg"].mask_png == same["mask_png"]


def test_a_registry_look_up_outside_any_store_fails_without_creating_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SparkScoringError, match="models:/lipseg@champion"):
        model_folder("models:/lipseg@champion", tmp_path / "staging")
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(SparkScoringError, match="not an MLflow model folder"):
        model_folder(str(tmp_path), tmp_path / "staging")


def test_photos_are_chosen_by_suffix_in_any_case() -> None:
    pattern = re.compile(suffix_pattern())
    for suffix in IMAGE_SUFFIXES:
        assert pattern.search(f"file:/data/a{suffix}") and pattern.search(f"s3a://b/c{suffix.upper()}")
    for name in ("notes.txt", "photo.jpg.part", "jpg", "_SUCCESS"):
        assert not pattern.search(name)


def test_paths_from_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    listing = tmp_path / "paths.txt"
    listing.write_text("# photos of day 1\n/data/a.jpg\n\n  s3a://bucket/day2/  \n")
    assert read_path_list(str(listing)) == ["/data/a.jpg", "s3a://bucket/day2/"]
    assert read_path_list(None) == []


def test_without_pyspark_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # what an install without the [spark] extra sees
    assert main(["spark-predict", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install 'lipseg[spark]'" in error


def test_without_java_the_error_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("pyspark", reason="pyspark is part of the [spark] extra")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["spark-predict", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Java runtime" in error and "default-jre-headless" in error


def test_an_existing_output_is_refused_before_spark_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"")
    assert main(["spark-predict", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
