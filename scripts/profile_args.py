"""A params profile as `dvc exp run` arguments, to run it in this workspace as a DVC experiment (params.yaml
itself, and its comments, stay as they are):

    dvc exp run $(python scripts/profile_args.py profiles/helen.yaml)

Prints one `-S key.path=value` per leaf of the profile (values as compact JSON, which DVC reads as YAML).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lipseg.core.scratch import load_profile


def leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out += leaves(value, f"{path}.") if isinstance(value, dict) and value else [(path, value)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    args = parser.parse_args()
    arguments = []
    for key, value in leaves(load_profile(args.profile)):
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if any(character.isspace() for character in f"{key}{text}"):
            raise SystemExit(
                f"{key}={text}: a value with spaces cannot pass through $(...); use dvc exp run -S by hand"
            )
        arguments += ["-S", f"{key}={text}"]
    print(" ".join(arguments))


if __name__ == "__main__":
    main()
