"""Pickle-free checkpoints: a real optimizer + scheduler state round-trips exactly, and resumed training
from it continues bit for bit; foreign or damaged files are refused with a named error."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from lipseg.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _train_steps(
    model: torch.nn.Module, optimiser: torch.optim.Optimizer, steps: int, generator: torch.Generator
) -> None:
    for _ in range(steps):
        inputs = torch.randn(8, 4, generator=generator)
        loss = (model(inputs) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_real_training_state_round_trips_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, patience=1)
    generator = torch.Generator().manual_seed(1)
    _train_steps(model, optimiser, 5, generator)
    scheduler.step(1.0)
    state = {
        "module": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
        "shuffler": generator.get_state(),
        "history": [{"epoch": 1, "val_nme": 0.1 + 1e-17}],
        "best": math.inf,
        "pair": (1, "a"),
        "finished": False,
        "empty": {},
    }
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)

    assert loaded["optimiser"]["param_groups"] == optimiser.state_dict()["param_groups"]
    assert sorted(loaded["optimiser"]["state"]) == sorted(optimiser.state_dict()["state"])  # integer keys stay integers
    assert loaded["scheduler"] == scheduler.state_dict() and loaded["best"] == math.inf
    assert loaded["history"] == state["history"] and loaded["pair"] == (1, "a") and loaded["empty"] == {}
    assert torch.equal(loaded["shuffler"], generator.get_state())

    # Resume into fresh objects and continue: the same weights as the run that never stopped.
    resumed = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    resumed.load_state_dict(loaded["module"])
    resumed_optimiser = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed_optimiser.load_state_dict(loaded["optimiser"])
    resumed_generator = torch.Generator().manual_seed(99)
    resumed_generator.set_state(loaded["shuffler"])
    _train_steps(model, optimiser, 5, generator)
    _train_steps(resumed, resumed_optimiser, 5, resumed_generator)
    for expected, actual in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(expected, actual)


def test_the_file_holds_no_pickle(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3), "note": "x"})
    data = path.read_bytes()
    assert b"\x80\x04" not in data[:16] and not data.startswith(b"PK")  # neither a pickle nor torch.save's zip
    header_size = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and header_size < len(data)  # a JSON header, then raw tensor bytes


def test_foreign_and_damaged_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, pickled)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(pickled)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a lipseg checkpoint"):
        load_checkpoint(plain)
    for skeleton in (
        "{not json",
        '{"__dict__": [[["a list as a key"], 1]]}',
        '{"__dict__": [[1]]}',
        '{"__tensor__": "t9"}',
    ):
        forged = tmp_path / "forged.safetensors"
        save_file(
            {"w": torch.ones(2)}, str(forged), metadata={"format": "lipseg-checkpoint-1", "lipseg.checkpoint": skeleton}
        )
        with pytest.raises(CheckpointError):
            load_checkpoint(forged)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"w": torch.ones(2)})
    good.write_bytes(good.read_bytes()[:-3])  # cut short
    with pytest.raises(CheckpointError):
        load_checkpoint(good)


def test_unsupported_values_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot store set"):
        save_checkpoint(tmp_path / "x.safetensors", {"bad": {1, 2}})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_no_code_of_ours_unpickles() -> None:
    """Every artifact we read goes through safetensors, allow_pickle=False npz, JSON or images."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("src", "stages")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(
            call in line
            for call in ("torch.load(", "pickle.load", "import pickle", "allow_pickle=True", "joblib", "cloudpickle")
        )
    ]
    assert offenders == []
