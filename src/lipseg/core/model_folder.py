"""The one model-folder format, for every model the project trains: weights in safetensors and a JSON
file with the schema, the model family, its config, the crop geometry and whatever the trainer adds
(training data, validation figures, ...). Nothing is pickled, and the folder alone rebuilds the model.

`SavableModel` is the base class of every saved network; each family says how its config and extra
fields become a module (`from_folder_meta`). This module knows no family: a loader names the class it
expects, and a folder of another family is a `ModelFolderError` that says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lipseg import __version__
from lipseg.core.files import write_json_atomic
from lipseg.core.model_meta import (  # noqa: F401  (the folder format's names, importable from here too)
    LEGACY_META_FILES,
    LEGACY_SCHEMAS,
    META_FILE,
    SCHEMA,
    WEIGHTS_FILE,
    ModelFolderError,
    read_model_meta,
)


class SavableModel(nn.Module):
    """A network that lives in a model folder. Subclasses set `family`, keep their config dataclass in
    `self.config` (with `to_dict`) and rebuild themselves from the folder's metadata."""

    family: ClassVar[str] = ""

    def folder_meta(self) -> dict[str, Any]:
        """Family fields written beside the config (e.g. the TCNN's kind and head count)."""
        return {}

    @classmethod
    def from_folder_meta(cls, meta: dict[str, Any]) -> SavableModel:
        """An untrained module shaped as the folder's metadata says (weights are loaded afterwards)."""
        raise NotImplementedError

    def save(self, folder: Path, geometry: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        save_model_folder(folder, self, geometry, extra)

    @classmethod
    def load(cls, folder: Path) -> tuple[Self, dict[str, Any]]:
        return load_model_folder(folder, cls)


def save_model_folder(
    folder: Path, model: SavableModel, geometry: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write weights and metadata into `folder` (the caller stages the folder itself, lipseg.core.files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    # One metadata key: safetensors writes the metadata from a hash map, so two keys come out in either order
    # and identical weights would give different bytes (and DVC hashes) from run to run.
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"schema": f"{SCHEMA} {model.family}"})
    write_json_atomic(
        folder / META_FILE,
        {
            "schema": SCHEMA,
            "family": model.family,
            "lipseg_version": __version__,
            "config": model.config.to_dict(),
            "geometry": dict(geometry),
            **model.folder_meta(),
            **(extra or {}),
        },
    )


def load_model_folder(folder: Path, expected: type[SavableModel]) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, metadata) of a folder holding an `expected`-family model."""
    folder = Path(folder)
    meta = read_model_meta(folder)
    if meta.get("family") != expected.family:
        raise ModelFolderError(f"{folder} holds a {meta.get('family')!r} model, not a {expected.family!r} one")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFolderError(f"{folder}: {WEIGHTS_FILE} is missing")
    try:
        # On the meta device a module allocates nothing: a config asking for huge layers costs no memory.
        # Its tensors are made (to_empty) only once the weights proved to have their shapes.
        with torch.device("meta"):
            model = expected.from_folder_meta(meta)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFolderError(f"{folder / META_FILE}: cannot build the model from its config ({error!r})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFolderError(f"{weights}: not readable safetensors weights ({error})") from None
    if (misfit := _misfit(model.state_dict(), state)) is not None:
        raise ModelFolderError(f"{weights}: the weights do not fit the model its metadata describes ({misfit})")
    model.to_empty(device="cpu").load_state_dict(state)
    return model.eval(), meta


def _misfit(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], shown: int = 3) -> str | None:
    """The tensors missing from the weights, not in the model, or of another shape or dtype; None when
    they fit (a few of each named, with how many more)."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")

    def spec(tensor: torch.Tensor) -> str:
        return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"

    problems = []
    if missing := [name for name in expected if name not in found]:
        problems.append(f"{some(missing)} missing from the file")
    if unexpected := [name for name in found if name not in expected]:
        problems.append(f"{some(unexpected)} not in the model")
    differ = [
        f"{name} is {spec(found[name])} in the file, {spec(tensor)} in the model"
        for name, tensor in expected.items()
        if name in found and (found[name].shape != tensor.shape or found[name].dtype != tensor.dtype)
    ]
    if differ:
        problems.append(some(differ))
    return "; ".join(problems) or None


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
