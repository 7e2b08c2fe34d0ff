"""What DVC users see: `dvc plots show` draws each chart from the columns dvc.yaml names, the small plot and
metric files live in git (so `dvc plots diff main` works from a fresh clone), the page renders in a
browser, and `dvc exp run --queue/--temp` log to the project's MLflow store, not to DVC's throwaway copy."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lipseg.core import tracking
from lipseg.core.files import csv_text
from lipseg.core.scratch import make_scratch_repo, run_checked, scratch_env
from lipseg.evaluation.plots import SEGMENTER_F1_COLUMNS, bic_csv, ced_csv, segmenter_f1_csv
from lipseg.segmentation.nets import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]
SCREENSHOTS = ROOT / "reports" / "screenshots"  # git-ignored; kept on the machine that ran the tests
# The versions DVC's own page loads from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS); here, from npm.
VEGA_PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
# The small files dvc.yaml keeps out of DVC's cache, for git: every plot CSV, the metrics, the small tables.
SMALL_FILES = [
    "metrics.json",
    "metrics_segmenters.json",
    "reports/crop/rejects.csv",
    "reports/segment_crops/rejects.csv",
    "reports/train_base/history.csv",
    "reports/fit_gmm_bic.csv",
    "reports/finetune_heads.json",
    "reports/evaluate_ced.csv",
    "reports/evaluate_segmenters_f1.csv",
    *(f"reports/train_segmenter/{arch}/history.csv" for arch in ARCHITECTURES),
]
# Files beside them that git must keep ignoring: DVC-cached outputs, the MLflow store, DVC's page.
CACHED_FILES = [
    "reports/train_base/curves.png",
    "reports/fit_gmm/bic.png",
    "reports/fit_gmm/clusters.json",
    "reports/evaluate/ced.png",
    "reports/evaluate/report_base.json",
    "reports/evaluate_segmenters/models.png",
    *(f"reports/train_segmenter/{arch}/curves.png" for arch in ARCHITECTURES),
    "models/segmenters/best.json",
    "mlflow.db",
    "dvc_plots/index.html",
]


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def top_level_plots() -> dict[str, dict]:
    plots = {}
    for entry in dvc_yaml()["plots"]:
        assert isinstance(entry, dict) and len(entry) == 1, f"a plot without x and y: {entry}"
        (plot_id, definition), *_ = entry.items()
        plots[plot_id] = definition
    return plots


def stage_outs() -> dict[str, dict]:
    """Every output path of every stage (the matrix stage expanded) -> its options."""
    outs = {}
    for stage in dvc_yaml()["stages"].values():
        items = [{"arch": arch} for arch in stage["matrix"]["arch"]] if "matrix" in stage else [None]
        for item in items:
            for out in stage.get("outs", []) + stage.get("metrics", []):
                path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                if item is not None:
                    path = path.replace("${item.arch}", item["arch"])
                outs[path] = options or {}
    return outs


def test_every_plot_names_its_x_and_y_and_says_what_it_shows() -> None:
    plots = top_level_plots()
    for plot_id, definition in plots.items():
        assert {"title", "x", "y", "x_label", "y_label", "template"} <= set(definition), plot_id
        assert len(definition["title"]) > 30 and ":" in definition["title"], plot_id  # "<what>: <which curves>"
    # Without x/y, DVC draws a stage's plot file by its last column against the row number.
    assert not [name for name, stage in dvc_yaml()["stages"].items() if "plots" in stage]
    segmenter_files = {f"reports/train_segmenter/{arch}/history.csv" for arch in ARCHITECTURES}
    overlaid = [definition for definition in plots.values() if set(definition["y"]) == segmenter_files]
    assert {definition["y"][next(iter(segmenter_files))] for definition in overlaid} >= {"val_f1_lips", "val_loss"}
    assert any("reports/evaluate_ced.csv" in definition["y"] for definition in plots.values())
    assert any("reports/evaluate_segmenters_f1.csv" in definition["y"] for definition in plots.values())


def test_plots_read_only_git_tracked_files() -> None:
    """A plot file inside a cached output needs DVC's cache: in a clone without it DVC fails every chart of
    that revision, not only that one (DataIndexDirError)."""
    outs = stage_outs()
    uncached = {path for path, options in outs.items() if options.get("cache") is False}
    assert uncached == set(SMALL_FILES)
    cached = [path for path in outs if path not in uncached]
    for definition in top_level_plots().values():
        for path in definition["y"]:
            assert path in uncached, path
            assert not [out for out in cached if path.startswith(out.rstrip("/") + "/")], path


def history(epochs: int, metric: str, rng: np.random.Generator, rising: bool) -> list[dict]:
    """Per-epoch records shaped as lipseg.core.fit writes them (epoch, train_loss, the task's figure, lr, seconds)."""
    rows = []
    for epoch in range(1, epochs + 1):
        decay = math.exp(-epoch / 6)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": 0.2 + 2.0 * decay + rng.normal(0, 0.02),
                "val_loss": 0.3 + 1.8 * decay + rng.normal(0, 0.03),
                metric: (0.9 - 0.7 * decay if rising else 0.02 + 0.08 * decay) + rng.normal(0, 0.005),
                "lr": 0.001,
                "seconds": 12 + rng.normal(0, 2),
            }
        )
    return rows


def write_plot_files(repo: Path, seed: int) -> None:
    """The plot CSVs and metrics files, written by the writers the stages use, on generated numbers."""
    rng = np.random.default_rng(seed)
    files = {
        "reports/train_base/history.csv": csv_text(history(20, "val_nme", rng, rising=False)),
        "reports/fit_gmm_bic.csv": bic_csv(
            [
                {"k": k, "bic": -3e5 - 4e4 * math.log(k) + 2e3 * k, "aic": -3.1e5 - 4e4 * math.log(k)}
                for k in range(2, 7)
            ]
        ),
    }
    thresholds = np.linspace(0, 0.15, 61)
    curves = {label: 1 - np.exp(-thresholds / scale) for label, scale in (("base", 0.03), ("tweaked", 0.025))}
    files["reports/evaluate_ced.csv"] = ced_csv(thresholds, curves)
    for index, arch in enumerate(ARCHITECTURES):
        files[f"reports/train_segmenter/{arch}/history.csv"] = csv_text(
            history(8 + 2 * index, "val_f1_lips", rng, rising=True)
        )
    files["reports/evaluate_segmenters_f1.csv"] = segmenter_f1_csv(
        {
            name: {column: rng.uniform(0.5, 0.95) for column in SEGMENTER_F1_COLUMNS}
            for name in ("tcnn landmarks", *ARCHITECTURES)
        }
    )
    for stage in ("crop", "segment_crops"):
        files[f"reports/{stage}/rejects.csv"] = "split,name,file,reason\n"
    files["reports/finetune_heads.json"] = json.dumps({"k": 2, "heads": []})
    files["metrics.json"] = json.dumps({"tweaked": {"nme_io": 0.03 + rng.uniform(0, 0.01)}})
    files["metrics_segmenters.json"] = json.dumps({"models": {"unet": {"f1_lips": 0.8 + rng.uniform(0, 0.05)}}})
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")


@pytest.fixture
def plots_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC repo holding the project's dvc.yaml, params.yaml and .gitignore, with plot files committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    env = scratch_env()
    run_checked(["git", "init", "-q", "-b", "main"], repo, env)
    run_checked([*DVC, "init", "-q"], repo, env)
    run_checked([*DVC, "config", "core.analytics", "false"], repo, env)
    write_plot_files(repo, seed=0)
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "plots"], repo, env)
    return repo, env


def plots_json(repo: Path, env: dict[str, str], *command: str) -> dict:
    done = subprocess.run([*DVC, "plots", *command, "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert not report.get("errors"), report["errors"]
    return report["data"]


def test_dvc_plots_show_draws_the_named_columns(plots_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = plots_repo
    shown = plots_json(repo, env, "show")
    plots = top_level_plots()
    assert set(shown) == set(plots)
    for plot_id, definition in plots.items():
        (chart,) = shown[plot_id]
        spec = chart["content"]
        assert spec["title"]["text"] == definition["title"]
        x_axis = spec["encoding"]["x"]
        assert (x_axis["field"], x_axis["type"], x_axis["title"]) == (
            definition["x"],
            "quantitative",
            definition["x_label"],
        )
        layers = [spec, *spec.get("layer", [])]  # a bar chart has one layer, a line chart several
        y_axes = [layer["encoding"]["y"] for layer in layers if "y" in layer.get("encoding", {})]
        assert y_axes and all(axis["title"] == definition["y_label"] for axis in y_axes), plot_id
        y_field = y_axes[0]["field"]  # the column itself, or the one DVC fills from each named column
        rows = spec["data"]["values"]
        for path, columns in definition["y"].items():
            header = (repo / path).read_text(encoding="utf-8").splitlines()[0].split(",")
            for column in [columns] if isinstance(columns, str) else columns:
                assert column in header, (plot_id, path, column)
                drawn = [row for row in rows if row.get("field", column) == column and column in row]
                if len(definition["y"]) > 1:  # several files: DVC names each line by its file
                    drawn = [row for row in drawn if path.endswith("/" + row["filename"])]
                expected = len((repo / path).read_text(encoding="utf-8").splitlines()) - 1
                assert len(drawn) == expected, (plot_id, path, column)
                assert all(row[column] == row[y_field] for row in drawn), (plot_id, column)


def test_small_files_are_in_git_so_a_fresh_clone_diffs_plots_and_metrics(
    plots_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, env = plots_repo
    for name in CACHED_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"cached by DVC")
    assert run_checked(["git", "status", "--porcelain", "--untracked-files=all"], repo, env).strip() == ""
    tracked = run_checked(["git", "ls-files"], repo, env).split()
    assert {name for name in SMALL_FILES} <= set(tracked)

    clone = tmp_path / "clone"
    run_checked(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)  # no DVC cache, no remote
    write_plot_files(clone, seed=1)  # a new run's numbers
    diff = plots_json(clone, env, "diff", "main")
    for plot_id, (chart,) in diff.items():
        assert set(chart["revisions"]) == {"main", "workspace"}, plot_id
        assert {row["rev"] for row in chart["content"]["data"]["values"]} == {"main", "workspace"}, plot_id
    done = subprocess.run(
        [*DVC, "metrics", "diff", "main", "--json"], cwd=clone, env=env, capture_output=True, text=True
    )
    changes = json.loads(done.stdout)
    assert changes["metrics.json"]["tweaked.nme_io"]["diff"] != 0
    assert changes["metrics_segmenters.json"]["models.unet.f1_lips"]["diff"] != 0


def test_the_store_of_a_dvc_experiment_copy_is_the_projects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    queued, temp = (project / ".dvc/tmp/exps/tmpab12cd", project / ".dvc/tmp/exps/standalone/tmpef34gh")
    for folder in (project, queued, temp):
        (folder / "stages").mkdir(parents=True)
        (folder / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for copy in (queued, temp):  # `dvc exp run --queue`, `dvc exp run --temp`
        monkeypatch.chdir(copy / "stages")
        assert tracking.project_root() == project.resolve()
        assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    # A folder that only looks like one (its "project" has no dvc.yaml) keeps its own store.
    (project / "dvc.yaml").unlink()
    assert tracking.project_root() == temp.resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.project_root() == tmp_path.resolve()


def queue_rows(repo: Path, env: dict[str, str]) -> list[str]:
    return run_checked([*DVC, "queue", "status"], repo, env).splitlines()


def stop_queue_workers(repo: Path, env: dict[str, str]) -> None:
    """`dvc queue stop`, then end (by pid) any worker of this repo's queue still running."""
    import psutil

    subprocess.run([*DVC, "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=120)
    deadline = time.monotonic() + 30
    while True:
        workers = []
        for process in psutil.process_iter(["cmdline", "cwd"]):
            command = " ".join(process.info["cmdline"] or [])
            if "queue-worker" in command and str(process.info["cwd"] or "").startswith(str(repo)):
                workers.append(process)
        if not workers or time.monotonic() > deadline:
            break
        time.sleep(1)
    for process in workers:
        process.kill()


@pytest.mark.slow
def test_queued_and_temp_experiments_log_to_the_projects_store(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tiny = {"data": {"source": "synthetic", "synthetic": {"n_train": 6, "n_test": 2, "image_size": 64}}}
    env = make_scratch_repo(repo, ROOT, tiny)
    run_checked([*DVC, "exp", "run", "--queue", "-S", "data.seed=1", "download"], repo, env)
    try:
        run_checked([*DVC, "queue", "start"], repo, env)
        deadline = time.monotonic() + 600
        while any(word in line for line in queue_rows(repo, env) for word in ("Queued", "Running")):
            assert time.monotonic() < deadline, "\n".join(queue_rows(repo, env))
            time.sleep(3)
        assert any("Success" in line for line in queue_rows(repo, env)), "\n".join(queue_rows(repo, env))
    finally:
        stop_queue_workers(repo, env)
    run_checked([*DVC, "exp", "run", "--temp", "-S", "data.seed=2", "download"], repo, env)

    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    with sqlite3.connect(repo / "mlflow.db") as db:
        runs = db.execute(
            "select runs.run_uuid, runs.artifact_uri, params.value from runs"
            " join tags on tags.run_uuid = runs.run_uuid and tags.key = 'lipseg.stage' and tags.value = 'download'"
            " join params on params.run_uuid = runs.run_uuid and params.key = 'seed'"
        ).fetchall()
    assert sorted(seed for _, _, seed in runs) == ["1", "2"]
    store_artifacts = (repo / "mlruns").resolve()
    for _, artifact_uri, _ in runs:
        assert artifact_uri.startswith(store_artifacts.as_uri()), artifact_uri
        assert (store_artifacts / artifact_uri.split("/mlruns/", 1)[1] / "download_summary.json").is_file()


def vega_scripts(cache: Path) -> dict[str, Path]:
    """vega, vega-lite and vega-embed's browser builds, from the npm registry once per cache folder."""
    if shutil.which("npm") is None:
        pytest.fail("no npm on PATH: the page's vega scripts come from the npm registry (Debian: apt-get install npm)")
    scripts = {}
    for package, version in VEGA_PACKAGES.items():
        script = cache / f"{package}-{version}.min.js"
        if not script.is_file():
            packed = run_checked(["npm", "pack", "--silent", f"{package}@{version}"], cache, scratch_env()).split()[-1]
            with tarfile.open(cache / packed) as archive:
                member = archive.extractfile(f"package/build/{package}.min.js")
                script.write_bytes(member.read())
        scripts[package] = script
    return scripts


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("no Chromium on PATH: run .ci/ensure_system (Debian: apt-get install chromium)")


def render_plots_page(repo: Path, env: dict[str, str], scripts: dict[str, Path], screenshot: Path) -> Path:
    """`dvc plots show -o` with vega served from files beside the page (DVC's own page loads it from a CDN),
    then a headless Chromium screenshot of it."""
    page_dir = repo / "dvc_plots"
    page_dir.mkdir(exist_ok=True)
    tags = ""
    for script in scripts.values():
        shutil.copy2(script, page_dir / script.name)
        tags += f'<script src="{script.name}"></script>\n'
    template = repo / "page_template.html"
    template.write_text(
        f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n<title>DVC Plot</title>\n{tags}</head>\n"
        "<body>\n{plot_divs}\n</body>\n</html>\n",
        encoding="utf-8",
    )
    run_checked([*DVC, "plots", "show", "-o", str(page_dir), "--html-template", str(template)], repo, env)
    page = page_dir / "index.html"
    assert "cdn.jsdelivr" not in page.read_text(encoding="utf-8")
    profile = repo / "chromium-profile"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    command = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={screenshot}",
        "--window-size=1400,3000",
        "--virtual-time-budget=10000",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert screenshot.is_file(), f"no screenshot ({done.returncode}):\n{done.stderr[-3000:]}"
    return screenshot


@pytest.mark.slow
def test_the_plots_page_renders_in_a_browser(
    plots_repo: tuple[Path, dict[str, str]], request: pytest.FixtureRequest
) -> None:
    from PIL import Image
    from scipy import ndimage

    repo, env = plots_repo
    scripts = vega_scripts(Path(request.config.cache.mkdir("vega")))
    shot = render_plots_page(repo, env, scripts, SCREENSHOTS / "dvc_plots_show.png")
    print(f"dvc plots show, as a browser shows it: {shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 10, "a blank page"
    # DVC colours each revision's lines; the workspace's colour must be drawn in every chart (7 of them).
    line = np.array([0x94, 0x5D, 0xD6])
    near_line = np.abs(pixels - line).sum(axis=2) < 40
    # One patch of line pixels per chart: the lines of a chart touch once thickened, the charts stay apart,
    # and a legend's dot is too small to count.
    patches, count = ndimage.label(ndimage.binary_dilation(near_line, iterations=12))
    sizes = ndimage.sum(near_line, patches, index=range(1, count + 1))
    assert int((sizes > 350).sum()) == len(top_level_plots()), f"line pixels per patch: {sorted(sizes)}"
    colours = {tuple(colour) for colour in pixels[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50  # lines, axes, text, legend: not a page of one or two colours
