"""Scratch copies of the pipeline for tests and benchmarks: a throwaway git + DVC repo holding this
project's dvc.yaml, params.yaml, stages/ and src/, so experiments never touch the user's workspace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore")
PROJECT_FOLDERS = ("stages", "src")


def deep_update(target: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict):
            deep_update(target.setdefault(key, {}), value)
        else:
            target[key] = value
    return target


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b.c=VALUE` strings (VALUE parsed as YAML) -> a nested params dict for deep_update/set_params."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def set_params(repo: Path, changes: dict[str, Any]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False), encoding="utf-8")


def run_checked(command: list[str], repo: Path, env: dict[str, str], timeout: float = 3600) -> str:
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout + done.stderr


def scratch_env(repo: Path | None = None) -> dict[str, str]:
    """This interpreter's tools first on PATH (DVC runs `python stages/...`), the default MLflow store;
    with `repo`, its own src/ first on PYTHONPATH, so the stages run the code DVC hashed there even when
    the project's working tree changes meanwhile."""
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "LIPSEG_PIPELINE_ID")}
    if repo is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(repo).resolve() / "src"), env.get("PYTHONPATH")]))
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "GIT_AUTHOR_NAME": "lipseg",
            "GIT_AUTHOR_EMAIL": "lipseg@localhost",
            "GIT_COMMITTER_NAME": "lipseg",
            "GIT_COMMITTER_EMAIL": "lipseg@localhost",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def copy_project(repo: Path, project_root: Path, params: dict[str, Any] | None = None) -> None:
    """The project's pipeline files into `repo` (replacing what is there), with `params` changes applied."""
    repo.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_FILES:
        shutil.copy2(project_root / item, repo / item)
    for folder in PROJECT_FOLDERS:
        shutil.rmtree(repo / folder, ignore_errors=True)
        shutil.copytree(
            project_root / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    if params:
        set_params(repo, params)


SOURCE_FILE = "lipseg_source.json"  # which commit of the project a scratch repo's code came from


def source_commit(project_root: Path) -> str:
    """The project's HEAD commit, marked when the pipeline's files differ from it."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=project_root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *PROJECT_FILES, *PROJECT_FOLDERS)
    return commit + (" (with uncommitted changes)" if dirty else "")


def make_scratch_repo(repo: Path, project_root: Path, params: dict[str, Any] | None = None) -> dict[str, str]:
    """Copy the pipeline into `repo`, apply `params` changes, `git init` + `dvc init`; return the env."""
    copy_project(repo, project_root, params)
    (repo / SOURCE_FILE).write_text(json.dumps({"commit": source_commit(project_root)}) + "\n", encoding="utf-8")
    env = scratch_env(repo)
    run_checked(["git", "init", "-q"], repo, env)
    dvc = [sys.executable, "-m", "dvc"]
    run_checked([*dvc, "init", "-q"], repo, env)
    run_checked([*dvc, "config", "core.analytics", "false"], repo, env)
    run_checked([*dvc, "config", "core.check_update", "false"], repo, env)
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "scratch pipeline"], repo, env)
    return env


def dvc_repro(repo: Path, env: dict[str, str], targets: tuple[str, ...] = ()) -> tuple[list[str], float]:
    """(stages DVC reports as run, in order; wall seconds) of one `dvc repro [targets]` (all stages when
    no target is given; a target also runs the stages it depends on)."""
    started = time.perf_counter()
    output = run_checked([sys.executable, "-m", "dvc", "repro", *targets], repo, env)
    return re.findall(r"Running stage '([a-z_@0-9]+)'", output), time.perf_counter() - started


def helen_scratch_repo(
    helen: Path,
    workdir: Path | None,
    settings: list[str],
    prefix: str = "lipseg-bench-",
    profile: dict[str, Any] | None = None,
    keep: bool = False,
) -> tuple[Path, dict[str, str]]:
    """A scratch repo (`workdir`/repo, or under a temp dir) whose pipeline reads the Helen-layout folder
    `helen`, with a `profile` (params overrides, e.g. profiles/helen.yaml) and `KEY=VALUE` settings on top
    of params.yaml: what the benchmarks and the release run in. With `keep`, an existing one is used as it
    is (its code, params, outputs and DVC cache), so the next `dvc repro` finishes what an interrupted one
    left."""
    import tempfile

    if not (helen / "annotation").is_dir():
        raise SystemExit(f"Helen-layout folder not found: {helen}")
    repo = (workdir or Path(tempfile.mkdtemp(prefix=prefix))).resolve() / "repo"  # commands run inside it
    overrides = deep_update(deep_update({}, profile or {}), parse_overrides(settings))
    overrides = deep_update(overrides, {"data": {"source": "helen", "helen_path": str(helen.resolve())}})
    project_root = Path(__file__).resolve().parents[3]
    if keep and (repo / ".dvc").is_dir():
        return repo, scratch_env(repo)
    if repo.exists():
        shutil.rmtree(repo)
    return repo, make_scratch_repo(repo, project_root, overrides)


def load_profile(path: Path) -> dict[str, Any]:
    """A params profile: a YAML file of params.yaml sections to override (only the keys it names)."""
    profile = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(profile, dict):
        raise ValueError(f"{path}: a profile is a mapping of params.yaml sections")
    return profile
