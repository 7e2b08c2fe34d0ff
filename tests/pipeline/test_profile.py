"""The real-data profile only overrides params that exist, and turns into `dvc exp run -S` arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from lipseg.core.scratch import deep_update, load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "helen.yaml"


def leaf_paths(node: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in node.items():
        paths |= leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return paths


def test_the_profile_overrides_only_existing_params_with_values_of_their_type() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = load_profile(PROFILE)
    missing = leaf_paths(profile) - leaf_paths(params)
    assert not missing, f"profile keys not in params.yaml (typos?): {sorted(missing)}"
    for path in leaf_paths(profile):
        old, new = params, profile
        for part in path.split("."):
            old, new = old[part], new[part]
        assert isinstance(new, type(old)) or (isinstance(old, float) and isinstance(new, int)), path
    merged = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), profile)
    assert merged["data"]["source"] == "helen" and merged["crop"]["size"] == params["crop"]["size"]


def test_profile_args_lists_every_leaf_as_a_dvc_set_param() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_args.py"), str(PROFILE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[::2] == ["-S"] * (len(words) // 2)
    settings = dict(word.split("=", 1) for word in words[1::2])
    assert set(settings) == leaf_paths(load_profile(PROFILE))
    assert settings["data.source"] == "helen" and yaml.safe_load(settings["segment_crops.size"]) == 96
