"""Batch scoring on Spark (`lipseg spark-predict`): photos read as bytes by Spark's binaryFile source, the
photo-level MLflow model applied through `mlflow.pyfunc.spark_udf`, one result row per photo written as
Parquet or JSON lines. pyspark is imported only here, when the command runs."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lipseg.core.images import IMAGE_SUFFIXES
from lipseg.inference.outputs import PHOTO_MODEL_COLUMNS

SPARK_INSTALL = "pip install 'lipseg[spark]'"
# The photo model's output columns but `name`: a row is named by the path Spark read it from. All strings;
# `faces`, `image_size`, `face_masks`, `notes` and `timings` hold JSON.
RESULT_COLUMNS = tuple(column for column in PHOTO_MODEL_COLUMNS if column != "name")
FORMATS = ("parquet", "json")
# Rows per Arrow batch handed to the model: Spark's default (10,000) would hold 10,000 photos in one
# worker's memory at once; 32 keeps a batch near 32 photos' bytes and still repays the batch overhead.
BATCH_ROWS = 32
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class SparkScoringError(Exception):
    """A problem the user can fix (no pyspark, no Java, a bad --out or model); one line, no traceback."""


def require_spark() -> None:
    """pyspark, MLflow and pyarrow importable and a Java runtime found, or SparkScoringError saying how to
    get them (the base install, `lipseg predict`'s, has none of them)."""
    import importlib.util

    for module in ("pyspark", "mlflow", "pyarrow"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails to import, or a module without a spec
            found = False
        if not found:
            raise SparkScoringError(f"{module} is not installed; install Spark scoring with: {SPARK_INSTALL}")
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").is_file()) and shutil.which("java") is None:
        raise SparkScoringError(
            "Spark needs a Java runtime (17 or newer) and none was found: set JAVA_HOME or put `java` on PATH "
            "(Debian/Ubuntu: apt-get install default-jre-headless)"
        )


def spark_session(master: str = "local[2]", app_name: str = "lipseg", batch_rows: int = BATCH_ROWS) -> Any:
    """A Spark session whose Python workers run this interpreter (so they import the same lipseg). A local
    master binds to 127.0.0.1 and starts no web UI: nothing listens beyond this machine."""
    require_spark()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app_name)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    builder = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    builder = builder.config("spark.log.level", "ERROR")
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    return builder.getOrCreate()


def suffix_pattern() -> str:
    """A regular expression for the photo file names `lipseg predict` takes, by suffix, any case."""
    return r"(?i)\.(" + "|".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES) + r")$"


def read_photos(spark: Any, paths: Sequence[str], partitions: int | None = None) -> Any:
    """A DataFrame (path, image) of the photos under `paths`: files, folders (searched recursively), globs or
    URIs of any file system Spark reads; photos by file name suffix. binaryFile packs small files into few
    partitions, so the rows are spread over `partitions` (default: the session's parallelism)."""
    from pyspark.sql import functions

    photos = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(list(paths))
    photos = photos.where(functions.col("path").rlike(suffix_pattern()))
    photos = photos.select("path", functions.col("content").alias("image"))
    return photos.repartition(partitions or spark.sparkContext.defaultParallelism)


def photo_udf(spark: Any, model_folder: Path, env_manager: str = "local") -> Any:
    """The photo model as a Spark UDF returning a struct of the photo model's columns per photo."""
    from lipseg.core.tracking import spark_udf

    result_type = ", ".join(f"{column} string" for column in PHOTO_MODEL_COLUMNS)
    return spark_udf(spark, model_folder, result_type, env_manager)


def score_photos(photos: Any, udf: Any) -> Any:
    """One row per photo: its path and the model's RESULT_COLUMNS."""
    from pyspark.sql import functions

    scored = photos.select("path", udf(functions.struct("image")).alias("result"))
    return scored.select("path", *(f"result.{column}" for column in RESULT_COLUMNS))


def release_photo_model(staging: Path) -> Path:
    """The release TCNN and segmenter that ship with lipseg, packed as the photo model under `staging`."""
    from lipseg.inference.models import RELEASE_SEGMENTER, RELEASE_TCNN
    from lipseg.inference.photo_pyfunc import save_photo_model

    return save_photo_model(staging / "photo_model", RELEASE_TCNN, RELEASE_SEGMENTER)


def model_folder(spec: str | None, staging: Path) -> Path:
    """--model as a local MLflow model folder: a folder as is, a registry or run URI downloaded (read-only)
    under `staging`, or the release model packed there when omitted."""
    if spec is None:
        return release_photo_model(staging)
    if spec.startswith(MLFLOW_SCHEMES):
        from lipseg.core.tracking import download_artifacts

        try:
            return download_artifacts(spec, staging / "download")
        except RuntimeError as error:
            raise SparkScoringError(str(error)) from error
    folder = Path(spec)
    if not (folder / "MLmodel").is_file():
        raise SparkScoringError(f"--model {spec}: not an MLflow model folder (no MLmodel file) nor an MLflow URI")
    return folder


def check_out(out: str) -> None:
    """--out must be new (or an empty folder): Spark writes a whole dataset of part files there."""
    if "://" in out:
        return  # another file system: Spark itself refuses an existing path
    path = Path(out)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise SparkScoringError(f"--out {out} already exists; Spark writes a new folder of part files, choose another")


def write_results(scored: Any, out: str, output_format: str) -> None:
    if "://" not in out and Path(out).is_dir():
        Path(out).rmdir()  # empty (check_out): Spark refuses any existing path
    scored.write.format(output_format).save(out)


def summarise(spark: Any, out: str, output_format: str) -> dict[str, Any]:
    """Counts from the written results (read back: the model does not run twice) and the first errors."""
    from pyspark.sql import functions

    results = spark.read.format(output_format).load(out)
    failed = functions.col("error") != ""
    row = results.agg(
        functions.count("*").alias("photos"),
        functions.sum(failed.cast("int")).alias("failed"),
        functions.sum(functions.json_array_length("faces")).alias("faces"),
        functions.sum((functions.json_array_length("faces") == 0).cast("int")).alias("no_face"),
    ).first()
    errors = [(item.path, item.error) for item in results.where(failed).select("path", "error").limit(10).collect()]
    return {key: int(row[key] or 0) for key in ("photos", "failed", "faces", "no_face")} | {"errors": errors}


def run_spark_predict(args: argparse.Namespace) -> int:
    """`lipseg spark-predict`: exit status 0, 1 when any photo failed (its row says why), 2 on a usage error."""
    try:
        check_out(args.out)
        paths = list(args.paths) + read_path_list(args.paths_from)
        if not paths:
            raise SparkScoringError("no input: give photo files, folders or globs, or --paths-from FILE")
        require_spark()
        from pyspark.sql import SparkSession

        # pyspark warns that it has not caught up with pandas 3; the columns used here are plain bytes and strings
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        with tempfile.TemporaryDirectory(prefix="lipseg-spark-") as staging:
            folder = model_folder(args.model, Path(staging))  # before the JVM starts: a bad --model fails fast
            started_here = SparkSession.getActiveSession() is None
            spark = spark_session(args.master)
            try:
                udf = photo_udf(spark, folder, args.env_manager)
                write_results(score_photos(read_photos(spark, paths, args.partitions), udf), args.out, args.format)
                summary = summarise(spark, args.out, args.format)
            finally:
                if started_here:  # a caller's own session (a notebook's) is left running
                    spark.stop()
    except SparkScoringError as error:
        print(f"lipseg: error: {error}", file=sys.stderr)
        return 2
    for path, error in summary["errors"]:
        print(f"lipseg: error: {path}: {error}", file=sys.stderr)
    print(
        f"lipseg: {summary['photos']} photos, {summary['faces']} faces, {summary['no_face']} without a face, "
        f"{summary['failed']} failed -> {args.out} ({args.format})",
        file=sys.stderr,
    )
    if summary["photos"] == 0:
        print("lipseg: error: no photos found in the given paths", file=sys.stderr)
        return 1
    return 1 if summary["failed"] else 0


def read_path_list(path: str | None) -> list[str]:
    """--paths-from: one photo path, folder, glob or URI per line; blank lines and # comments skipped."""
    if path is None:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SparkScoringError(f"--paths-from {path}: {getattr(error, 'strerror', None) or error}") from error
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def add_spark_predict(commands: Any) -> None:
    """The `spark-predict` sub-command on the `lipseg` parser's sub-parsers."""
    from lipseg.inference.cli import positive_int  # the CLI's own option type; cli imports this module

    command = commands.add_parser(
        "spark-predict",
        help="score many photos with the photo-level MLflow model on a Spark cluster (or local cores)",
        description="Reads the photos with Spark, runs the photo-level MLflow model on them through "
        "mlflow.pyfunc.spark_udf and writes one row per photo to DIR as Parquet or JSON lines: path, "
        f"{', '.join(RESULT_COLUMNS)} (faces as in `lipseg predict`'s JSON; mask_png a base64 label PNG, "
        "0 background, 1 upper lip, 2 inner mouth, 3 lower lip; face_masks per face and lip class as "
        "`lipseg predict --format coco` writes them, with RLE). Exit status 1 when any photo failed. "
        f"Needs pyspark and a Java runtime: {SPARK_INSTALL}.",
    )
    command.add_argument("paths", nargs="*", metavar="PATH", help="photos, folders (recursive), globs or URIs")
    command.add_argument("--paths-from", metavar="FILE", help="a text file naming more inputs, one per line")
    command.add_argument("--out", required=True, metavar="DIR", help="new output folder (or URI) for the results")
    command.add_argument(
        "--model",
        metavar="MODEL",
        help="photo-level MLflow model: a folder or URI such as models:/lipseg@champion "
        "(default: the release model that ships with lipseg, packed as one)",
    )
    command.add_argument("--format", choices=FORMATS, default="parquet", help="output format (default: parquet)")
    command.add_argument(
        "--master", default="local[2]", help="Spark master URL (default: local[2], two cores of this machine)"
    )
    command.add_argument(
        "--partitions",
        type=positive_int,
        metavar="N",
        help="spread the photos over N tasks (default: the cluster's cores)",
    )
    command.add_argument(
        "--env-manager",
        choices=("local", "virtualenv", "uv", "conda"),
        default="local",
        help="where the workers run the model: their own Python with lipseg's requirements (local), or an "
        "environment MLflow builds from the model's requirements (needs the package index) (default: local)",
    )
    command.set_defaults(handler=run_spark_predict)
