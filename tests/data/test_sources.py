from __future__ import annotations

from pathlib import Path

import pytest

from lipseg.core.params import ParamsError
from lipseg.data.helen import load_split
from lipseg.data.rejects import DatasetError
from lipseg.data.sources import DataParams, folder_digest, materialise


def test_helen_source_copies_the_layout_and_leaves_the_source_alone(tmp_path: Path, synthetic_dir: Path) -> None:
    before = sorted(path.relative_to(synthetic_dir) for path in synthetic_dir.rglob("*"))
    out = tmp_path / "raw"
    out.mkdir()
    summary = materialise(
        DataParams(source="helen", helen_path=str(synthetic_dir)), out, tmp_path / "cache", progress=False
    )
    digest = summary.pop("digest")
    assert summary == {"source": "helen", "images": 40, "annotations": 40}
    assert len(digest) == 64 and digest == folder_digest(out)  # what a model trained on it records
    (out / "images" / sorted(p.name for p in (out / "images").iterdir())[0]).write_bytes(b"changed")
    assert folder_digest(out) != digest
    assert sorted(path.relative_to(synthetic_dir) for path in synthetic_dir.rglob("*")) == before
    assert not (out / "states.csv").exists()  # only the Helen layout is copied
    records, rejects = load_split(out, "test")
    assert len(records) == 10 and rejects == []


def test_synthetic_source_is_deterministic(tmp_path: Path) -> None:
    params = DataParams.from_params(
        {
            "source": "synthetic",
            "seed": 3,
            "synthetic": {"n_train": 4, "n_test": 2, "image_size": 96},
            "helen_path": "",
            "urls": [],
        },
        "data",
    )
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        materialise(params, tmp_path / name, tmp_path / "cache", progress=False)
    first = sorted((tmp_path / "a" / "annotation").iterdir())
    second = sorted((tmp_path / "b" / "annotation").iterdir())
    assert len(first) == 6 and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


DEFAULTS = {
    "source": "synthetic",
    "seed": 0,
    "synthetic": {"n_train": 4, "n_test": 2, "image_size": 96},
    "helen_path": "",
    "urls": [],
}


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"source": "nope"}, ParamsError, "data.source must be one of 'synthetic', 'helen', 'url', got 'nope'"),
        ({"source": "url", "urls": []}, DatasetError, "data.urls is empty"),
        (
            {"source": "url", "urls": [{"url": "http://127.0.0.1/x.zip"}]},
            DatasetError,
            r"data.urls\[0\] must have url and sha256",
        ),
        ({"source": "helen", "helen_path": "/definitely/not/here"}, DatasetError, "folder not found"),
        ({"synthetic": {"n_train": 4, "n_test": 2}}, ParamsError, "missing key data.synthetic.image_size"),
        ({"sed": 1}, ParamsError, "unknown key data.sed"),
    ],
)
def test_bad_source_params_are_clear_errors(tmp_path: Path, params: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        materialise(
            DataParams.from_params({**DEFAULTS, **params}, "data"), tmp_path, tmp_path / "cache", progress=False
        )
