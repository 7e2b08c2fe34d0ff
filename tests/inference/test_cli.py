from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.helen import load_split
from lipseg.inference.cli import main
from lipseg.inference.outputs import OutsideOutError, collect_inputs, predict_image_file, safe_output


def labels(path: Path) -> np.ndarray:
    """The label values of a palette PNG as `lipseg predict` writes it by default (its palette indices)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "P", f"{path.name} is {image.mode}, not a palette PNG"
        return np.asarray(image)


@pytest.fixture
def photo_folder(tmp_path: Path, synthetic_dir: Path) -> Path:
    """Synthetic photos (upscaled so dlib's HOG finds the faces), a nested one, a blank one and a broken one."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    records, _ = load_split(synthetic_dir, "test")
    for index, record in enumerate(records[:3]):
        image = cv2.resize(cv2.imread(str(record.image_path)), (320, 320), interpolation=cv2.INTER_CUBIC)
        target = folder / ("nested" if index == 2 else "") / f"{record.name}.jpg"
        cv2.imwrite(str(target), image)
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 300, 3), 127, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_json_mask_overlay_and_reports_failures(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    code = main(["predict", str(photo_folder), "--out", str(out), "--model", str(tiny_model_folder), "--quiet"])
    assert code == 1  # broken.jpg failed, the others were still processed
    stderr = capsys.readouterr().err
    assert "broken.jpg" in stderr and "4 images" in stderr and "1 failed" in stderr
    jsons = sorted(out.rglob("*.json"))
    assert len(jsons) == 4
    assert (out / "nested").is_dir()
    blank = json.loads((out / "blank.json").read_text())
    assert blank["faces"] == []
    assert labels(out / "blank.png").max() == 0
    with_faces = [json.loads(p.read_text()) for p in jsons if p.name != "blank.json"]
    assert sum(len(payload["faces"]) for payload in with_faces) >= 2
    for path in jsons:
        payload = json.loads(path.read_text())
        mask = labels(path.with_suffix(".png"))
        assert mask.ndim == 2 and mask.dtype == np.uint8 and mask.max() <= 3
        assert (mask.shape[1], mask.shape[0]) == tuple(payload["image_size"])
        for face in payload["faces"]:
            assert len(face["lips"]) == 56 and len(face["box"]) == 4 and face["cluster"] in (0, 1)
            assert face["head"] == f"cluster_{face['cluster']}"
            assert {"detect", "mouth", "crop", "tcnn", "mask"} <= set(payload["timings_ms"])
        if payload["faces"]:
            assert mask.max() > 0 and (out / f"{path.relative_to(out).with_suffix('')}_overlay.jpg").is_file()


def test_label_pngs_carry_the_overlay_palette_and_png_grey_is_what_opencv_reads(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path
) -> None:
    from PIL import Image

    from lipseg.evaluation.outputs import read_prediction
    from lipseg.evaluation.overlays import CLASS_COLOURS

    photos = sorted(path for path in photo_folder.glob("*.jpg") if path.stem != "broken")
    palette, grey = tmp_path / "palette", tmp_path / "grey"
    assert main(predict_args(photos, palette, tiny_model_folder, "--no-overlay")) == 0
    assert main(predict_args(photos, grey, tiny_model_folder, "--no-overlay", "--format", "png-grey")) == 0
    for photo in photos:
        name = f"{photo.stem}.png"
        indexed = labels(palette / name)
        single = cv2.imread(str(grey / name), cv2.IMREAD_UNCHANGED)
        assert single.ndim == 2 and single.dtype == np.uint8
        np.testing.assert_array_equal(indexed, single)  # the same values 0..3, only the encoding differs
        assert indexed.max() > 0 and set(np.unique(indexed)) <= {0, 1, 2, 3}
        with Image.open(palette / name) as image:
            colours = np.array(image.getpalette()[:12]).reshape(4, 3)
        assert colours[0].tolist() == [0, 0, 0]
        assert [colours[label].tolist() for label in (1, 2, 3)] == [
            list(CLASS_COLOURS[label][::-1]) for label in (1, 2, 3)
        ]
        # why png-grey exists: OpenCV turns a palette PNG into a colour picture, which lipeval refuses
        assert cv2.imread(str(palette / name), cv2.IMREAD_UNCHANGED).ndim == 3
        # the project's own scorer reads both
        for folder in (palette, grey):
            np.testing.assert_array_equal(read_prediction(folder, photo.stem, "png"), single)


def test_lipeval_takes_png_grey_and_refuses_the_palette_png(tmp_path: Path, synthetic_dir: Path, lipeval) -> None:
    """The official scorer on label masks of the ground-truth lips, written as predict writes them."""
    import subprocess
    import sys

    from lipseg.data.landmarks import HELEN_LIPS
    from lipseg.evaluation.masks import label_mask_from_faces
    from lipseg.inference.outputs import label_png

    records = load_split(synthetic_dir, "test")[0][:3]
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{record.name}\n" for record in records))
    reports = {}
    for variant, palette in (("png-grey", False), ("png", True)):
        folder = tmp_path / variant
        folder.mkdir()
        for record in records:
            height, width = cv2.imread(str(record.image_path)).shape[:2]
            mask = label_mask_from_faces([record.points[HELEN_LIPS]], height, width)
            (folder / f"{record.name}.png").write_bytes(label_png(mask, palette))
        report = tmp_path / f"{variant}.json"
        command = [
            sys.executable,
            lipeval.__file__,
            "--gt",
            str(synthetic_dir),
            "--split",
            "test",
            "--pred",
            str(folder),
        ]
        subprocess.run([*command, "--names", str(names), "--json", str(report), "--quiet"], check=True)
        reports[variant] = json.loads(report.read_text())
    assert reports["png-grey"]["counts"]["ok"] == len(records)
    assert reports["png-grey"]["pooled"]["lips"]["f1"] == 1.0
    assert reports["png"]["counts"]["malformed"] == len(records)
    assert "colour PNG" in json.dumps(reports["png"]["problems"])


def test_cascade_mouth_source_runs(photo_folder: Path, tmp_path: Path, tiny_model_folder: Path) -> None:
    shutil.rmtree(photo_folder / "nested")
    (photo_folder / "broken.jpg").unlink()
    code = main(
        [
            "predict",
            str(photo_folder),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model_folder),
            "--mouth",
            "cascade",
            "--no-overlay",
            "--quiet",
        ]
    )
    assert code == 0
    assert not list((tmp_path / "o").glob("*_overlay.jpg"))


@pytest.mark.parametrize("passes", [2, 3])
def test_cascade_passes_each_recrop_on_the_previous_lips(
    photo_folder: Path, tiny_model_folder: Path, passes: int
) -> None:
    from lipseg.inference.predictor import LipPredictor

    predictor = LipPredictor(
        tiny_model_folder, mouth_source="cascade", engine="torch", cascade_passes=passes, flip_average=True
    )
    calls: list[tuple[np.ndarray, bool]] = []
    run_crops = predictor.run_crops
    predictor.run_crops = lambda crops, flip: calls.append((crops, flip)) or run_crops(crops, flip)
    image = cv2.imread(str(next(photo_folder.glob("*.jpg"))))
    result = predictor.predict(image)
    assert result.faces, "the synthetic photo has a face"
    assert len(calls) == passes  # one TCNN batch per pass, all faces at once
    assert [flip for _, flip in calls] == [False] * (passes - 1) + [True]  # flip averaging on the final pass only
    assert {"detect", "mouth", "crop", "tcnn"} <= set(result.timings_ms)
    # The final crop is the training geometry's box around the lips of a run with one pass fewer.
    if passes > 2:
        fewer = LipPredictor(
            tiny_model_folder, mouth_source="cascade", engine="torch", cascade_passes=passes - 1, flip_average=False
        ).predict(image)
        for face, previous in zip(result.faces, fewer.faces, strict=True):
            centre, side = predictor.geometry.box(previous.lips)
            np.testing.assert_allclose(face.crop_box, [*(centre - side / 2), *(centre + side / 2)], rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 passes"):
        LipPredictor(tiny_model_folder, mouth_source="cascade", engine="torch", cascade_passes=1)


def test_missing_model_and_unknown_schema_are_clear(
    tmp_path: Path, photo_folder: Path, capsys: pytest.CaptureFixture, tiny_model_folder: Path
) -> None:
    assert main(["predict", str(photo_folder), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad_model"
    shutil.copytree(tiny_model_folder, bad)
    meta = json.loads((bad / "lipseg_model.json").read_text())
    meta["schema"] = "lipseg-tcnn/0"
    (bad / "lipseg_model.json").write_text(json.dumps(meta))
    assert main(["predict", str(photo_folder), "--out", str(tmp_path / "o"), "--model", str(bad)]) == 2
    assert "unknown model schema" in capsys.readouterr().err


def test_inputs_are_collected_by_extension_with_unique_stems(tmp_path: Path) -> None:
    for relative in ("a/x.jpg", "b/x.JPG", "c.mp4", "d.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    found, problems = collect_inputs(
        [str(tmp_path / "a/x.jpg"), str(tmp_path / "b/x.JPG"), str(tmp_path / "c.mp4"), str(tmp_path / "missing")]
    )
    assert [(f.out_stem.as_posix(), f.kind) for f in found] == [("x", "image"), ("x_1", "image"), ("c", "video")]
    assert problems == [(str(tmp_path / "missing"), "no such file or folder")]
    folder_found, _ = collect_inputs([str(tmp_path)])
    assert sorted(f.out_stem.as_posix() for f in folder_found) == ["a/x", "b/x", "c"]


def test_outputs_never_leave_the_out_folder(tmp_path: Path) -> None:
    assert safe_output(tmp_path, Path("sub/x"), ".json") == tmp_path / "sub" / "x.json"
    with pytest.raises(OutsideOutError, match="outside --out"):
        safe_output(tmp_path / "out", Path("../../escape"), ".json")


def test_predict_never_writes_outside_out_even_through_a_planted_symlink(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    """An --out folder whose `nested` entry is a symlink to elsewhere (left by someone, or planted): the
    photo that would land there is refused by name, the others are written, nothing appears outside."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "nested").symlink_to(elsewhere, target_is_directory=True)
    (photo_folder / "broken.jpg").unlink()
    before = sorted(path.name for path in tmp_path.iterdir())
    code = main(["predict", str(photo_folder), "--out", str(out), "--model", str(tiny_model_folder), "--quiet"])
    assert code == 1
    assert "outside --out" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # nothing new beside --out either
    assert len([path for path in out.glob("*.json")]) == 3  # the top-level photos were still processed


def test_help_texts(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model" in text and "models:/lipseg-" in text and "champion" in text and "--redetect-every" in text


def test_version_and_python_dash_m() -> None:
    import subprocess
    import sys

    from lipseg import __version__

    done = subprocess.run([sys.executable, "-m", "lipseg", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"lipseg {__version__}\n"


def test_onnx_engine_gives_the_torch_landmarks(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIPSEG_CACHE", str(tmp_path / "cache"))
    shutil.rmtree(photo_folder / "nested")
    (photo_folder / "broken.jpg").unlink()
    outputs = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        assert (
            main(
                [
                    "predict",
                    str(photo_folder),
                    "--out",
                    str(out),
                    "--model",
                    str(tiny_model_folder),
                    "--engine",
                    engine,
                    "--no-overlay",
                    "--quiet",
                ]
            )
            == 0
        )
        outputs[engine] = {p.name: json.loads(p.read_text())["faces"] for p in sorted(out.glob("*.json"))}
    assert list((tmp_path / "cache" / "onnx").glob("*/tweaked.onnx"))  # exported once, cached
    assert outputs["torch"].keys() == outputs["onnx"].keys()
    for name, faces in outputs["torch"].items():
        for torch_face, onnx_face in zip(faces, outputs["onnx"][name], strict=True):
            assert torch_face["cluster"] == onnx_face["cluster"]
            np.testing.assert_allclose(torch_face["lips"], onnx_face["lips"], atol=2e-3)


@pytest.fixture
def segmenter_folder(tmp_path: Path) -> Path:
    import torch

    from lipseg.data.geometry import CropGeometry
    from lipseg.segmentation.model import SegmenterNet
    from lipseg.segmentation.nets import SegmenterConfig

    torch.manual_seed(0)
    folder = tmp_path / "project" / "models" / "segmenters" / "unet"
    SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3)).save(
        folder, CropGeometry(32, 0.5).to_dict()
    )
    return folder


def test_mask_source_segmenter_labels_the_crops_and_keeps_the_landmarks(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path, segmenter_folder: Path
) -> None:
    from lipseg.segmentation.runner import SegmenterRunner

    out = tmp_path / "o"
    code = main(
        [
            "predict",
            str(photo_folder),
            "--out",
            str(out),
            "--model",
            str(tiny_model_folder),
            "--mask-source",
            "segmenter",
            "--segmenter",
            str(segmenter_folder),
            "--no-overlay",
            "--quiet",
        ]
    )
    assert code == 1  # the broken file still fails; the others are processed
    photo = next(path for path in sorted(photo_folder.glob("*.jpg")) if path.stem != "broken")
    result = json.loads((out / f"{photo.stem}.json").read_text())
    assert result["mask_source"] == "segmenter:unet" and len(result["faces"][0]["lips"]) == 56
    image = cv2.imread(str(photo))
    expected = SegmenterRunner(segmenter_folder, flip_average=False).label_mask(
        image, [np.array(face["lips"], np.float32) for face in result["faces"]]
    )
    written = labels(out / f"{photo.stem}.png")
    assert (
        written.shape == image.shape[:2] and (written == expected).mean() > 0.999
    )  # lips rounded to 3 decimals in the JSON


def test_mask_source_auto_follows_the_measured_best_and_segmenter_needs_a_model(
    photo_folder: Path,
    tmp_path: Path,
    tiny_model_folder: Path,
    segmenter_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from lipseg.inference.models import ModelNotFoundError
    from lipseg.inference.models import segmenter_folder as resolve

    project = segmenter_folder.parents[2]
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project)
    assert resolve("auto", None) is None  # no comparison yet: the polygons
    with pytest.raises(ModelNotFoundError, match="no segmenter found"):
        resolve("segmenter", None)
    best = project / "models" / "segmenters" / "best.json"
    best.write_text(json.dumps({"arch": "unet", "folder": "models/segmenters/unet", "beats_landmarks": False}))
    assert resolve("auto", None) is None
    assert resolve("landmarks", None) is None
    assert resolve("segmenter", None) == project / "models/segmenters/unet"
    best.write_text(json.dumps({"arch": "unet", "folder": "models/segmenters/unet", "beats_landmarks": True}))
    assert resolve("auto", None) == project / "models/segmenters/unet"
    assert (
        main(
            [
                "predict",
                str(photo_folder),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(tiny_model_folder),
                "--mask-source",
                "segmenter",
                "--segmenter",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "missing: no such folder" in capsys.readouterr().err
    with pytest.raises(
        ModelNotFoundError, match="no such folder"
    ):  # a named folder is never silently replaced by the polygons
        resolve("auto", str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "requested, images, cores, expected", [(3, 10, 2, 3), (3, 2, 2, 2), (0, 100, 2, 2), (0, 20, 2, 1)]
)
def test_job_count(requested: int, images: int, cores: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipseg.inference import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert cli.job_count(requested, images) == expected


def test_worker_processes_write_what_one_process_writes(
    photo_folder: Path, tmp_path: Path, tiny_model_folder: Path, segmenter_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        arguments = ["predict", str(photo_folder), "--out", str(out), "--model", str(tiny_model_folder)]
        arguments += ["--mask-source", "segmenter", "--segmenter", str(segmenter_folder), "--jobs", str(jobs)]
        assert main([*arguments, "--engine", "torch", "--threads", "1"]) == 1  # broken.jpg fails either way
        stderr = capsys.readouterr().err
        assert "broken.jpg" in stderr and "4 images" in stderr and "1 failed" in stderr
        assert ("2 worker processes" in stderr) == (jobs == 2)
        outputs[jobs] = out
    files = sorted(path.relative_to(outputs[1]) for path in outputs[1].rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(outputs[2]) for path in outputs[2].rglob("*") if path.is_file())
    for name in files:
        if name.suffix == ".png":
            single, pooled = (labels(outputs[jobs] / name) for jobs in (1, 2))
            np.testing.assert_array_equal(single, pooled)
        elif name.suffix == ".json":
            single, pooled = (json.loads((outputs[jobs] / name).read_text()) for jobs in (1, 2))
            assert [face["lips"] for face in single["faces"]] == [face["lips"] for face in pooled["faces"]]


# ------------------------------------------------------------------------------- hostile options and outputs


def predict_args(paths: list[Path], out: Path, model: Path, *extra: str) -> list[str]:
    return ["predict", *map(str, paths), "--out", str(out), "--model", str(model), "--quiet", *extra]


def test_an_out_folder_that_is_an_input_folder_is_refused_before_anything_is_written(
    photo_folder: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copy(next(photo_folder.glob("*.jpg")), photo_folder / "photo.png")  # its mask would be photo.png
    before = {path: path.read_bytes() for path in photo_folder.rglob("*") if path.is_file()}
    assert main(predict_args([photo_folder], photo_folder, tiny_model_folder)) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in photo_folder.rglob("*") if path.is_file()} == before


def test_an_output_that_would_overwrite_an_input_file_is_refused(
    tmp_path: Path, photo_folder: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    photo = out / "photo.png"
    photo.write_bytes((photo_folder / "blank.png").read_bytes())
    assert main(predict_args([photo], out, tiny_model_folder)) == 2
    assert f"would overwrite the input {photo}" in capsys.readouterr().err
    assert photo.read_bytes() == (photo_folder / "blank.png").read_bytes() and sorted(out.iterdir()) == [photo]


def test_an_out_folder_inside_an_input_folder_is_not_searched(
    photo_folder: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = photo_folder / "out"
    for _ in range(2):
        assert main(predict_args([photo_folder], out, tiny_model_folder, "--jobs", "1")) == 1  # broken.jpg
        assert "lipseg: 4 images," in capsys.readouterr().err  # the rerun does not take its outputs for photos
    assert not (out / "out").exists() and not list(out.rglob("*_overlay_overlay.jpg"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--out", ""], "argument --out: must name a folder, got an empty string"),
        (["--out", "FILE"], "argument --out: FILE exists and is not a folder"),
        (["--redetect-every", "0"], "argument --redetect-every: must be >= 1, got 0"),
        (["--cascade-passes", "1"], "argument --cascade-passes: must be >= 2 and <= 10, got 1"),
        (["--threads", "-1"], "argument --threads: must be >= 0 and <= 1024, got -1"),
        (["--upsample", "-1"], "argument --upsample: must be >= 0 and <= 3, got -1"),
        (["--upsample", "9"], "argument --upsample: must be >= 0 and <= 3, got 9"),
        (["--jobs", "two"], "argument --jobs: must be an integer, got 'two'"),
        (["--max-pixels", "0"], "argument --max-pixels: must be >= 1, got 0"),
        (["--smooth-min-cutoff", "0"], "argument --smooth-min-cutoff: must be > 0, got 0"),
        (["--smooth-beta", "nan"], "argument --smooth-beta: must be >= 0, got nan"),
    ],
)
def test_option_values_are_checked_by_the_parser(
    tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("FILE").write_text("a file where the output folder should go")
    Path("photo.jpg").write_bytes(b"never read: the parser refuses first")
    arguments = ["predict", "photo.jpg", "--out", "out", "--model", "no/such/model", *option]
    with pytest.raises(SystemExit) as caught:
        main(arguments)
    assert caught.value.code == 2
    assert f"lipseg predict: error: {message}\n" in capsys.readouterr().err
    assert not Path("out").exists()


@pytest.mark.parametrize("mask_format", ["png", "coco"])
def test_ctrl_c_prints_what_was_done_and_exits_130(
    mask_format: str,
    photo_folder: Path,
    tmp_path: Path,
    tiny_model_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    import lipseg.inference.cli as cli

    done = []

    def interrupted_after_two(item, *args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(item.path)
        return predict_image_file(item, *args, **kwargs)

    monkeypatch.setattr(cli, "predict_image_file", interrupted_after_two)
    out = tmp_path / "out"
    assert main(predict_args([photo_folder], out, tiny_model_folder, "--jobs", "1", "--format", mask_format)) == 130
    stderr = capsys.readouterr().err
    summary = re.search(r"lipseg: interrupted; done before that: (\d+) images, .* (\d+) failed;", stderr)
    assert summary and "Traceback" not in stderr
    images, failed = map(int, summary.groups())
    photo_jsons = [path for path in out.rglob("*.json") if path != out / "annotations.json"]
    assert images + failed == 2 and len(photo_jsons) == images and not list(out.rglob(".*.tmp"))
    if mask_format == "coco":  # the photos done are listed, as their JSON files are there
        assert len(json.loads((out / "annotations.json").read_text())["images"]) == images


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_processes_with_a_summary(
    tmp_path: Path, photo_folder: Path, tiny_model_folder: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    many = tmp_path / "many"
    many.mkdir()
    for index in range(400):
        shutil.copy(photo_folder / "blank.png", many / f"blank_{index:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lipseg.inference.cli", *predict_args([many], out, tiny_model_folder)]
    process = subprocess.Popen(
        [*command, "--jobs", "2"],
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python then keeps ignoring it; a person at a
        # terminal has it at its default, which Python turns into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.json"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "lipseg: interrupted; done before that:" in stderr and "Traceback" not in stderr
    written = len(list(out.glob("*.json")))
    assert 8 <= written < 400 and not list(out.glob(".*.tmp"))


def test_outputs_follow_the_umask(tmp_path: Path, photo_folder: Path, tiny_model_folder: Path) -> None:
    import os
    import stat

    previous = os.umask(0o027)
    try:
        out = tmp_path / "out"
        assert main(predict_args([photo_folder / "blank.png"], out, tiny_model_folder, "--jobs", "1")) == 0
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert modes == {"blank.json": 0o640, "blank.png": 0o640, "blank_overlay.jpg": 0o640}


def test_exif_orientation_is_honoured(
    tmp_path: Path, photo_folder: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    upright = next(photo_folder.glob("*.jpg"))
    pixels = cv2.imread(str(upright))
    folder = tmp_path / "turned"
    folder.mkdir()
    cv2.imwrite(str(folder / "upright.png"), pixels)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored a quarter turn right: a viewer turns it back left
    sideways = Image.fromarray(cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)[..., ::-1])
    sideways.save(folder / "sideways.png", exif=exif)
    out = tmp_path / "out"
    assert main(predict_args([folder], out, tiny_model_folder, "--jobs", "1")) == 0
    turned, plain = (json.loads((out / f"{name}.json").read_text()) for name in ("sideways", "upright"))
    assert turned["exif_orientation"] == 8 and plain["exif_orientation"] == 1
    assert turned["image_size"] == plain["image_size"] and len(turned["faces"]) == len(plain["faces"]) >= 1
    assert np.allclose(turned["faces"][0]["lips"], plain["faces"][0]["lips"], atol=1e-3)
    assert "sideways.png: EXIF orientation 8: turned as a viewer shows it" in capsys.readouterr().err


def test_folders_name_what_is_not_a_regular_file(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    for name in ("still.gif", "frame.ppm", "scan.pgm", "..jpg"):
        (folder / name).write_bytes(b"read later")
    os.mkfifo(tmp_path / "direct.png")
    found, problems = collect_inputs([str(folder), str(tmp_path / "direct.png")])
    assert sorted((item.path.name, str(item.out_stem)) for item in found) == [
        ("..jpg", "..jpg"),
        ("frame.ppm", "frame"),
        ("scan.pgm", "scan"),
        ("still.gif", "still"),
    ]
    assert sorted((Path(name).name, reason) for name, reason in problems) == [
        ("direct.png", "not a regular file (a FIFO)"),
        ("gone.jpg", "a broken symbolic link"),
        ("pipe.jpg", "not a regular file (a FIFO)"),
        ("zero.png", "not a regular file (a character device)"),
    ]


def test_printable_escapes_what_would_forge_a_log_line() -> None:
    from lipseg.inference.outputs import printable

    assert printable("a\nlipseg: 0 failed\r\t\x1b[2J.jpg") == "a\\nlipseg: 0 failed\\r\\t\\x1b[2J.jpg"
    assert printable(Path(b"caf\xe9.jpg".decode("utf-8", "surrogateescape"))) == "caf\\udce9.jpg"


def test_upsampling_stops_at_the_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipseg.inference.detect import FaceDetector

    levels = []

    class RecordingHog:
        def __init__(self, hog) -> None:
            self.hog = hog

        def run(self, rgb: np.ndarray, level: int, threshold: float):
            levels.append(level)
            return self.hog.run(rgb, level, threshold)

    detector = FaceDetector("hog", upsample=3, max_pixels=100 * 100 * 16)
    monkeypatch.setattr(detector, "_hog", RecordingHog(detector._hog))
    assert detector(np.full((100, 100, 3), 127, np.uint8)) == []
    assert levels == [0, 1, 2]  # a third step would make 64 x the pixels, over the limit
