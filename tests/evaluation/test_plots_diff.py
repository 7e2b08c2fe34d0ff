"""`dvc plots diff --json` charts drawn as PNG images (lipseg.evaluation.plots_diff); the line charts are
drawn from DVC's real output in tests/pipeline/test_workflows.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lipseg.evaluation.plots_diff import DiffImage, PlotsDiffError, draw_spec, markdown, render_plots_diff

WORKSPACE, MAIN = (0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)


def bar_spec(rows: list[dict]) -> dict:
    """What DVC's bar_horizontal template gives for a two-revision diff (the parts the drawing reads)."""
    return {
        "title": {"text": "lips F1 per mask source"},
        "data": {"values": rows},
        "encoding": {
            "x": {"field": "f1_lips", "type": "quantitative", "title": "lips F1"},
            "y": {"field": "model", "type": "nominal", "title": "mask source"},
            "color": {"field": "rev", "scale": {"domain": ["workspace", "main"], "range": ["#945dd6", "#13adc7"]}},
        },
    }


def colours(path: Path) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in np.array(Image.open(path).convert("RGB")).reshape(-1, 3)}


def test_a_bar_chart_shows_each_revision_in_dvcs_colour(tmp_path: Path) -> None:
    rows = [
        {"model": model, "f1_lips": str(value), "rev": rev}
        for rev, shift in (("workspace", 0.02), ("main", 0.0))
        for model, value in (("unet", 0.85 + shift), ("segnet", 0.78 + shift))
    ]
    images = render_plots_diff({"segmenters_test_f1": [{"type": "vega", "content": bar_spec(rows)}]}, tmp_path)
    assert [(image.plot_id, image.title, image.path.name) for image in images] == [
        ("segmenters_test_f1", "lips F1 per mask source", "segmenters_test_f1.png")
    ]
    assert {WORKSPACE, MAIN} <= colours(images[0].path)


def test_a_revision_missing_from_a_chart_draws_the_other_alone(tmp_path: Path) -> None:
    """A plot new in this commit has no rows on main: the chart shows the workspace only."""
    rows = [{"model": "unet", "f1_lips": "0.8", "rev": "workspace"}]
    draw_spec(bar_spec(rows), tmp_path / "new.png")
    found = colours(tmp_path / "new.png")
    assert WORKSPACE in found and MAIN not in found


def test_a_chart_without_rows_or_x_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlotsDiffError, match="no rows"):
        draw_spec(bar_spec([]), tmp_path / "empty.png")
    spec = bar_spec([{"model": "unet", "f1_lips": "0.8", "rev": "main"}])
    del spec["encoding"]["x"]
    with pytest.raises(PlotsDiffError, match="no x field"):
        draw_spec(spec, tmp_path / "no-x.png")
    assert not list(tmp_path.iterdir())


def test_image_plots_are_left_to_dvcs_page_and_markdown_links_are_relative(tmp_path: Path) -> None:
    assert render_plots_diff({"mouth.png": [{"type": "image", "url": "x"}]}, tmp_path / "images") == []
    image = DiffImage("a", "A chart", tmp_path / "images" / "a.png")
    assert markdown([image], tmp_path) == "![A chart](images/a.png)"
