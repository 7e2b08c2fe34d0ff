"""`dvc plots diff` as PNG images, for a pull-request comment (the pipeline workflow), where DVC's own page
cannot be shown: GitHub renders a comment's images, not its HTML or vega.

DVC does the diffing: `dvc plots diff <rev> --json` gives, per top-level plot of dvc.yaml, the vega-lite
spec it would draw, with every revision's rows inlined (each row tagged with `rev`, and with `field` or
`filename` when one chart holds several columns or files). This module draws each spec with matplotlib
as DVC's page does: one colour per revision (DVC's colours), one dash per column or file, the spec's
title and axis titles; a bar chart groups its bars by revision. Run in a project after `dvc repro`:

    python -m lipseg.evaluation.plots_diff origin/main --out plots-diff/images --markdown plots-diff/images.md

draws the workspace against `origin/main`; the Markdown's image paths are relative to its folder.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lipseg.evaluation.plots import save_figure

DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
SERIES_FIELDS = ("field", "filename")  # how DVC tells apart the lines one revision draws in one chart


class PlotsDiffError(RuntimeError):
    """`dvc plots diff` failed or gave something this module does not draw."""


@dataclass(frozen=True)
class DiffImage:
    plot_id: str
    title: str
    path: Path


def dvc_plots_diff(revisions: Sequence[str], dvc: str = "dvc", cwd: Path | None = None) -> dict[str, list[dict]]:
    """{plot id: [rendered spec, ...]} of `dvc plots diff <revisions> --json`, run in `cwd`."""
    command = [dvc, "plots", "diff", *revisions, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise PlotsDiffError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)["data"]
    except (ValueError, KeyError, TypeError) as error:
        raise PlotsDiffError(f"{' '.join(command)} printed no plots JSON ({error})") from None


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _title(spec: dict) -> str:
    title = spec.get("title", "")
    return str(title.get("text", "") if isinstance(title, dict) else title)


def _channel(spec: dict, name: str) -> dict:
    """An encoding channel of the spec or of its first layer that has it (DVC puts y in the layers)."""
    for encoding in [spec.get("encoding") or {}] + [layer.get("encoding") or {} for layer in spec.get("layer") or []]:
        if (encoding.get(name) or {}).get("field"):
            return encoding[name]
    return {}


def _revision_colours(spec: dict, rows: list[dict]) -> dict[str, str]:
    """{revision: colour} of the revisions with rows, in DVC's colours where the spec gives them (a plot new
    in this commit has no rows on the base: it is not in the legend)."""
    colour = _channel(spec, "color")
    scale = (colour.get("scale") or {}) if colour.get("field") == "rev" else {}
    present = list(dict.fromkeys(row.get("rev", "") for row in rows))
    palette = list(scale.get("range") or []) or plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(dict.fromkeys([*(scale.get("domain") or []), *present]))  # DVC's order, then any it left out
    return {revision: palette[order.index(revision) % len(palette)] for revision in order if revision in present}


def _short_names(names: list[str]) -> dict[str, str]:
    """Series names without what they all end with ("unet/history.csv" -> "unet")."""
    if len(names) < 2:
        return {name: name for name in names}
    common = Path(*Path(names[0]).parts[1:]).as_posix() if "/" in names[0] else ""
    if not common or not all(name.endswith("/" + common) for name in names):
        return {name: name for name in names}
    return {name: name[: -len(common) - 1] for name in names}


def _draw_lines(axis: plt.Axes, spec: dict, rows: list[dict], colours: dict[str, str]) -> None:
    """One line per revision (colour) and column or file (dash); two legends say which is which."""
    from matplotlib.lines import Line2D

    x_field = _channel(spec, "x")["field"]
    y_field = _channel(spec, "y").get("field")
    series_field = next((field for field in SERIES_FIELDS if any(field in row for row in rows)), None)
    series = list(dict.fromkeys(row.get(series_field, "") for row in rows)) if series_field else [""]
    for revision, colour in colours.items():
        for index, name in enumerate(series):
            picked = [row for row in rows if row.get("rev") == revision and row.get(series_field, "") == name]
            # with several columns in one chart DVC moves each row's value to dvc_inferred_y_value
            column = "dvc_inferred_y_value" if picked and "dvc_inferred_y_value" in picked[0] else (y_field or name)
            points = sorted((_number(row.get(x_field)), _number(row.get(column))) for row in picked)
            if points:
                axis.plot(*zip(*points), color=colour, linestyle=DASHES[index % len(DASHES)], linewidth=1.4)
    handles = [Line2D([], [], color=colour, linewidth=2) for colour in colours.values()]
    revisions = axis.legend(handles, list(colours), title="revision", fontsize=7, title_fontsize=7, loc="upper left")
    revisions.set_bbox_to_anchor((1.01, 1.0))
    if len(series) > 1:
        axis.add_artist(revisions)
        short = _short_names(series)
        dashes = [Line2D([], [], color="grey", linestyle=DASHES[i % len(DASHES)]) for i in range(len(series))]
        axis.legend(dashes, [short[name] for name in series], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 0.55))


def _draw_bars(axis: plt.Axes, spec: dict, rows: list[dict], colours: dict[str, str]) -> None:
    """Horizontal bars (DVC's bar_horizontal: x the value, y the category), grouped by revision."""
    value_field, category_field = _channel(spec, "x")["field"], _channel(spec, "y")["field"]
    categories = list(dict.fromkeys(str(row.get(category_field)) for row in rows))
    height = 0.8 / max(len(colours), 1)
    for index, (revision, colour) in enumerate(colours.items()):
        values = {
            str(row.get(category_field)): _number(row.get(value_field)) for row in rows if row.get("rev") == revision
        }
        positions = [place + index * height for place in range(len(categories))]
        bars = axis.barh(positions, [values.get(name, float("nan")) for name in categories], height, color=colour)
        bars.set_label(revision)
        axis.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    axis.legend(title="revision", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_yticks([place + height * (len(colours) - 1) / 2 for place in range(len(categories))], categories)
    axis.invert_yaxis()
    finite = [_number(row.get(value_field)) for row in rows]
    finite = [value for value in finite if value == value]
    if finite:  # DVC's spec says zero: false; leave room for the labels
        low, high = min(finite), max(finite)
        axis.set_xlim(max(low - 0.1 * (high - low + 1e-6), 0), high + 0.15 * (high - low + 1e-6))


def draw_spec(spec: dict, path: Path) -> None:
    """One chart of `dvc plots diff --json` as a PNG at `path`."""
    rows = (spec.get("data") or {}).get("values") or []
    if not rows:
        raise PlotsDiffError(f"{_title(spec) or path.stem}: no rows in any revision")
    if not _channel(spec, "x").get("field"):
        raise PlotsDiffError(f"{_title(spec) or path.stem}: the spec names no x field")
    colours = _revision_colours(spec, rows)
    figure, axis = plt.subplots(figsize=(7.5, 4))
    bars = _channel(spec, "y").get("type") == "nominal"
    (_draw_bars if bars else _draw_lines)(axis, spec, rows, colours)
    axis.set_xlabel(_channel(spec, "x").get("title") or _channel(spec, "x")["field"])
    axis.set_ylabel(_channel(spec, "y").get("title") or _channel(spec, "y").get("field") or "")
    axis.set_title(_title(spec), fontsize=9)
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def render_plots_diff(plots: dict[str, list[dict]], out_dir: Path) -> list[DiffImage]:
    """A PNG per chart of `dvc plots diff --json`'s `data` under `out_dir`, in dvc.yaml's order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for plot_id, specs in plots.items():
        for index, item in enumerate(specs):
            if item.get("type") != "vega":
                continue  # an image plot: DVC's page shows it; nothing to draw
            name = slug(plot_id) + (f"_{index}" if len(specs) > 1 else "")
            path = out_dir / f"{name}.png"
            draw_spec(item["content"], path)
            images.append(DiffImage(plot_id, _title(item["content"]) or plot_id, path))
    return images


def markdown(images: Sequence[DiffImage], relative_to: Path) -> str:
    """One `![title](path)` line per image, paths relative to `relative_to` (the comment job rewrites them
    to where it publishes the images)."""
    return "\n\n".join(
        f"![{image.title}]({image.path.resolve().relative_to(relative_to.resolve()).as_posix()})" for image in images
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the revision to compare the workspace with, e.g. origin/main")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG images")
    parser.add_argument("--markdown", type=Path, required=True, help="file for the Markdown image lines")
    parser.add_argument("--dvc", default="dvc", help="the dvc command (default: dvc on PATH)")
    args = parser.parse_args(argv)
    try:
        images = render_plots_diff(dvc_plots_diff([args.base], args.dvc), args.out)
    except PlotsDiffError as error:
        print(f"plots_diff: {error}", file=sys.stderr)
        return 1
    if not images:
        print("plots_diff: dvc plots diff gave no chart to draw", file=sys.stderr)
        return 1
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(images, args.markdown.parent.resolve()) + "\n", encoding="utf-8")
    print(f"plots_diff: {len(images)} charts in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
