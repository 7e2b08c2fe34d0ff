"""The GitHub workflows: valid against GitHub's workflow schema, and hardened (least-privilege tokens,
stale runs cancelled, SHA-pinned actions, the GPU runner closed to forks, pull requests that register
nothing); broken copies are rejected, and the pull-request report step is run on a tiny DVC project."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = {name: ROOT / ".github" / "workflows" / f"{name}.yml" for name in ("tests", "pipeline")}
SAME_REPO_GUARD = (
    "github.event_name != 'pull_request' || github.event.pull_request.head.repo.full_name == github.repository"
)
# owner/repo[/path]@<40 hex> # <tag>: the SHA is what runs, the tag is what a reader checks it against
PINNED_USE = re.compile(r"^\s*(?:-\s+)?uses:\s*[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}\s+#\s*v\d\S*\s*$")
# the expression forms the workflows use to pick a value per event: `event_name OP 'x'`, optionally
# followed by `&& 'a' || 'b'`
EVENT_CHOICE = re.compile(
    r"^\$\{\{\s*github\.event_name\s*(==|!=)\s*'(\w+)'(?:\s*&&\s*'([^']*)'\s*\|\|\s*'([^']*)')?\s*\}\}$"
)
LOCK_FILES = ("pyproject.toml", "requirements.lock", "requirements-cuda.lock")
# what the GPU runner installs from (make install LOCK=requirements-cuda.lock), so what its venv is keyed on
RUNNER_LOCK_FILES = ("pyproject.toml", "requirements-cuda.lock")


def load(text: str) -> dict:
    """YAML 1.2, as GitHub reads it: `on` stays a key (PyYAML's YAML 1.1 turns it into True)."""
    return YAML(typ="safe", pure=True).load(text)


def schema(vendor: str, name: str) -> dict:
    folder = resources.files("check_jsonschema.builtin_schemas") / vendor
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


SCHEMAS = [schema("vendor", "github-workflows"), schema("custom", "github-workflows-require-timeout")]


def schema_errors(workflow: dict) -> list[str]:
    """Errors against schemastore's GitHub workflow schema (vendored by check-jsonschema) and its
    companion that requires a timeout on every job."""
    found = []
    for spec in SCHEMAS:
        validator = jsonschema.validators.validator_for(spec)(spec, format_checker=jsonschema.FormatChecker())
        for error in validator.iter_errors(workflow):
            # a oneOf error's own message repeats the whole instance; its branches say what is wrong
            reasons = [branch.message for branch in error.context] or [error.message]
            found.append(f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {' | '.join(reasons)}")
    return found


def event_choice(expression: str, event: str) -> str:
    """The value `expression` gives on `event`; fails on any other expression form."""
    match = EVENT_CHOICE.match(str(expression).strip())
    assert match, f"not an event choice this test can read: {expression!r}"
    op, name, if_true, if_false = match.groups()
    holds = (event == name) == (op == "==")
    if if_true is None:
        return "true" if holds else "false"
    return if_true if holds else if_false


def runs_on(job: dict) -> list[str]:
    labels = job.get("runs-on", [])
    return [labels] if isinstance(labels, str) else list(labels)


def step_text(step: dict) -> str:
    return " ".join(str(step.get(key, "")) for key in ("run", "uses", "if")) + json.dumps(step.get("env", {}))


def policy_problems(text: str) -> list[str]:
    """What a workflow breaks of the project's rules, one line each (empty when it keeps them all)."""
    workflow = load(text)
    problems = []
    for line in text.splitlines():
        if re.match(r"^\s*(?:-\s+)?uses:", line) and not PINNED_USE.match(line):
            problems.append(f"not pinned by a commit SHA with its tag in a comment: {line.strip()}")
    permissions = workflow.get("permissions")
    if not isinstance(permissions, dict) or permissions.get("contents") != "read":
        problems.append(f"top-level permissions must be a map with contents: read, not {permissions!r}")
    elif any(level == "write" for level in permissions.values()):
        problems.append("top-level permissions grant a write scope")
    concurrency = workflow.get("concurrency")
    if not isinstance(concurrency, dict) or "github.ref" not in str(concurrency.get("group", "")):
        problems.append("no concurrency group per ref")
    elif "cancel-in-progress" not in concurrency:
        problems.append("concurrency does not say whether stale runs are cancelled")
    for name, job in workflow.get("jobs", {}).items():
        granted = job.get("permissions", {})
        if granted == "write-all" or "write" in str(granted):
            if any("actions/checkout" in step.get("uses", "") for step in job.get("steps", [])):
                problems.append(f"job {name} holds a write token and checks out code")
            if "self-hosted" in runs_on(job):
                problems.append(f"job {name} holds a write token on the self-hosted runner")
        if "self-hosted" in runs_on(job) and SAME_REPO_GUARD not in " ".join(str(job.get("if", "")).split()):
            problems.append(f"self-hosted job {name} lacks the same-repository guard")
    return problems


def pipeline_problems(text: str) -> list[str]:
    """The pipeline workflow's own rules: lock files trigger it, pull requests register nothing and use no
    team tracking server, the venv lives outside the workspace keyed on the lock file."""
    workflow = load(text)
    problems = []
    for event in ("push", "pull_request"):
        paths = (workflow["on"].get(event) or {}).get("paths", [])
        problems += [f"{event} paths lack {name}" for name in LOCK_FILES if paths and name not in paths]
    for name, job in workflow["jobs"].items():
        if "self-hosted" not in runs_on(job):
            continue
        env = {**workflow.get("env", {}), **job.get("env", {})}
        if "MLFLOW_TRACKING_URI" in env:
            problems.append(f"job {name} sets MLFLOW_TRACKING_URI for every event, pull requests included")
        register = env.get("LIPSEG_REGISTER")
        if register is None or event_choice(register, "pull_request") != "0":
            problems.append(f"job {name} does not set LIPSEG_REGISTER=0 on pull requests")
        elif event_choice(register, "push") == "0":
            problems.append(f"job {name} registers nothing on pushes to main either")
        steps = job.get("steps", [])
        for step in steps:
            if "MLFLOW_TRACKING_URI=" in step.get("run", "") and "github.event_name != 'pull_request'" not in str(
                step.get("if", "")
            ):
                problems.append(f"step {step.get('name')!r} may set MLFLOW_TRACKING_URI on a pull request")
        repro = [step for step in steps if 'dvc" repro' in step.get("run", "") or "dvc repro" in step.get("run", "")]
        if not repro or "unset MLFLOW_TRACKING_URI" not in repro[0]["run"]:
            problems.append(f"job {name}'s dvc repro keeps a runner-wide MLFLOW_TRACKING_URI on pull requests")
        venv = [step for step in steps if "VENV=" in step.get("run", "")]
        if not venv or not all(f"'{lock}'" in step_text(venv[0]) for lock in RUNNER_LOCK_FILES):
            problems.append(f"job {name}'s venv is not keyed on {' and '.join(RUNNER_LOCK_FILES)}")
        elif "$RUNNER_TOOL_CACHE" not in venv[0]["run"] or "PIP_CACHE_DIR=" not in venv[0]["run"]:
            problems.append(f"job {name}'s venv or pip cache lives in the workspace, which checkout cleans")
        if not any("make install LOCK=requirements-cuda.lock" in step.get("run", "") for step in steps):
            problems.append(f"job {name} does not install from the CUDA lock (a GPU runner would get CPU torch)")
    return problems


def test_workflows_match_githubs_workflow_schema() -> None:
    for name, path in WORKFLOWS.items():
        assert schema_errors(load(path.read_text(encoding="utf-8"))) == [], name


def test_check_jsonschema_cli_accepts_the_workflows() -> None:
    """What a contributor runs by hand: `check-jsonschema --builtin-schema vendor.github-workflows`."""
    for builtin in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        done = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", builtin, *map(str, WORKFLOWS.values())],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflows_keep_the_policies(name: str) -> None:
    assert policy_problems(WORKFLOWS[name].read_text(encoding="utf-8")) == []


def test_pipeline_keeps_pull_requests_off_the_registry_and_the_team_server() -> None:
    assert pipeline_problems(WORKFLOWS["pipeline"].read_text(encoding="utf-8")) == []


def test_pipeline_cancels_stale_pull_requests_but_never_a_run_on_main() -> None:
    cancel = load(WORKFLOWS["pipeline"].read_text(encoding="utf-8"))["concurrency"]["cancel-in-progress"]
    assert [event_choice(cancel, event) for event in ("pull_request", "push", "workflow_dispatch")] == [
        "true",
        "false",
        "false",
    ]


def test_only_the_comment_job_may_write_and_only_to_pull_requests() -> None:
    jobs = load(WORKFLOWS["pipeline"].read_text(encoding="utf-8"))["jobs"]
    writers = {name: job["permissions"] for name, job in jobs.items() if "write" in str(job.get("permissions", ""))}
    # the comment, and the branch lipseg-plots/pr-<n> that holds its images; reading the run's artifact
    assert writers == {"comment": {"pull-requests": "write", "contents": "write", "actions": "read"}}
    assert SAME_REPO_GUARD.split(" || ")[1] in jobs["comment"]["if"]
    assert "github.event_name == 'pull_request'" in jobs["comment"]["if"]


def test_tests_workflow_runs_the_readme_command_on_every_push_and_pull_request() -> None:
    workflow = load(WORKFLOWS["tests"].read_text(encoding="utf-8"))
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert not any((workflow["on"][event] or {}).get("paths") for event in workflow["on"])
    steps = workflow["jobs"]["tests"]["steps"]
    assert [step["run"] for step in steps if "run" in step] == ["make test"]
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/pip"
    assert "hashFiles('requirements.lock', 'pyproject.toml')" in cache["with"]["key"]


# name: (workflow, text to replace, its replacement, what the rejection must say)
BREAKAGES = {
    "unknown job key": (
        "tests",
        "    timeout-minutes: 60\n",
        "    timeout-minutes: 60\n    runs_on_gpu: true\n",
        "'runs_on_gpu' was unexpected",
    ),
    "job without a timeout": ("tests", "    timeout-minutes: 60\n", "", "'timeout-minutes' is a required property"),
    "tag-pinned action": (
        "tests",
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2",
        "actions/checkout@v4",
        "not pinned by a commit SHA",
    ),
    "SHA without its tag": (
        "pipeline",
        "@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2",
        "@11bd71901bbe5b1630ceea73d27597364c9af683",
        "with its tag in a comment",
    ),
    "no top-level permissions": ("tests", "permissions:\n  contents: read\n", "", "top-level permissions"),
    "write-all": ("pipeline", "permissions:\n  contents: read\n", "permissions: write-all\n", "'write-all'"),
    "no concurrency": (
        "tests",
        "concurrency:\n  group: ${{ github.workflow }}-${{ github.ref }}\n  cancel-in-progress: true\n",
        "",
        "no concurrency group per ref",
    ),
    "self-hosted job open to forks": (
        "pipeline",
        f"    if: {SAME_REPO_GUARD}\n    runs-on: [self-hosted, gpu]\n",
        "    runs-on: [self-hosted, gpu]\n",
        "lacks the same-repository guard",
    ),
    "writer on the GPU runner": (
        "pipeline",
        "    timeout-minutes: 240\n",
        "    timeout-minutes: 240\n    permissions:\n      pull-requests: write\n",
        "holds a write token on the self-hosted runner",
    ),
    "pull requests register": ("pipeline", "&& '0' || '1' }}", "&& '1' || '1' }}", "LIPSEG_REGISTER=0"),
    "team server on pull requests": (
        "pipeline",
        '      DVC_NO_ANALYTICS: "1"\n',
        '      DVC_NO_ANALYTICS: "1"\n      MLFLOW_TRACKING_URI: ${{ vars.MLFLOW_TRACKING_URI }}\n',
        "sets MLFLOW_TRACKING_URI for every event",
    ),
    "team server step on every event": (
        "pipeline",
        "if: github.event_name != 'pull_request' && vars.",
        "if: vars.",
        "may set MLFLOW_TRACKING_URI on a pull request",
    ),
    "runner-wide server kept on pull requests": (
        "pipeline",
        "then unset MLFLOW_TRACKING_URI; fi",
        "then :; fi",
        "keeps a runner-wide MLFLOW_TRACKING_URI",
    ),
    "lock file not a trigger": ("pipeline", "      - requirements.lock\n", "", "paths lack requirements.lock"),
    "CPU lock on the GPU runner": (
        "pipeline",
        "make install LOCK=requirements-cuda.lock",
        "make install",
        "does not install from the CUDA lock",
    ),
    "venv in the workspace": (
        "pipeline",
        'root="$RUNNER_TOOL_CACHE/lipseg"',
        'root="$PWD/.cache"',
        "lives in the workspace",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_copy_is_rejected(breakage: str) -> None:
    name, old, new, reason = BREAKAGES[breakage]
    text = WORKFLOWS[name].read_text(encoding="utf-8")
    assert old in text, f"the breakage {breakage!r} no longer applies to {name}.yml"
    broken = text.replace(old, new)
    found = schema_errors(load(broken)) + policy_problems(broken)
    if name == "pipeline":
        found += pipeline_problems(broken)
    assert any(reason in problem for problem in found), f"{breakage}: not rejected for it: {found}"


def test_check_jsonschema_cli_rejects_an_unknown_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOWS["tests"].read_text(encoding="utf-8").replace("runs-on:", "run-on:"))
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stdout + done.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=ci@lipseg", "-c", "user.name=ci", *args], cwd=repo, check=True, capture_output=True
    )


@pytest.mark.slow
def test_report_step_diffs_metrics_params_and_plots_against_main(tmp_path: Path) -> None:
    """The pipeline's report step, run as a pull request runs it, on a tiny DVC project whose branch
    changes a metric, a param and a plot against origin/main."""
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = Path(sys.prefix) / "bin" / "dvc"
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([str(dvc), "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: 'true'\n    params: [lr]\n"
        "    metrics:\n      - metrics.json:\n          cache: false\n"
        "    plots:\n      - history.csv:\n          cache: false\n          x: epoch\n          y: loss\n"
    )

    def commit(lr: float, f1: float, last_loss: float, message: str) -> None:
        (repo / "params.yaml").write_text(f"lr: {lr}\n")
        (repo / "metrics.json").write_text(json.dumps({"f1": f1}))
        (repo / "history.csv").write_text(f"epoch,loss\n1,0.9\n2,{last_loss}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", message)

    commit(0.01, 0.80, 0.5, "main")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    commit(0.02, 0.85, 0.4, "pull request")

    step = next(
        s
        for s in load(WORKFLOWS["pipeline"].read_text(encoding="utf-8"))["jobs"]["repro"]["steps"]
        if s.get("id") == "report"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DVC_NO_ANALYTICS": "1",
        "VENV": sys.prefix,
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_BASE_REF": "main",
        "BEFORE": "",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr

    output = (tmp_path / "output").read_text()
    assert output.startswith("markdown<<") and output.splitlines()[-1] == output.splitlines()[0].split("<<")[1]
    report = (tmp_path / "summary.md").read_text()
    assert report in output
    assert re.search(r"\| metrics\.json \| f1 +\| 0\.8 +\| 0\.85 +\| 0\.05", report), report
    assert re.search(r"\| params\.yaml \| lr +\| 0\.01 +\| 0\.02", report), report
    page = (repo / "plots-diff" / "index.html").read_text()
    assert '"rev": "origin/main"' in page and '"rev": "workspace"' in page
    assert "artifact (open `index.html`)" in report
    assert "Each chart as an image" in report
    image = repo / "plots-diff" / "images" / "history.csv.png"
    assert (repo / "plots-diff" / "images.md").read_text().strip() == "![history.csv](images/history.csv.png)"
    pixels = np.array(Image.open(image).convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(value) for value in row) for row in pixels}
    assert {(0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)} <= colours  # DVC's colours: the workspace and origin/main

    posted = run_comment_job(tmp_path, repo / "plots-diff", output)
    server_repo = tmp_path / "server" / "owner" / "repo.git"
    branch = git_output(server_repo, "rev-parse", "refs/heads/lipseg-plots/pr-7")
    assert git_output(server_repo, "ls-tree", "--name-only", branch) == "history.csv.png"
    published = subprocess.run(["git", "show", f"{branch}:history.csv.png"], cwd=server_repo, capture_output=True)
    assert published.stdout == image.read_bytes()
    assert posted.startswith("<!-- lipseg-pipeline-report -->") and report.strip() in posted
    assert f"![history.csv](file://{tmp_path}/server/owner/repo/raw/{branch}/history.csv.png)" in posted
    calls = (tmp_path / "gh-calls.txt").read_text()
    assert "api --method DELETE repos/owner/repo/git/refs/heads/lipseg-plots/pr-3" in calls  # closed
    assert "pr-7" not in calls.split("DELETE", 1)[1]  # open: kept


FAKE_GH = """#!{python}
# GitHub's gh, as the comment job calls it, answered from the folder FAKE_GH: the artifact, two image
# branches (pull request 3 closed, 7 open), no earlier comment; every call is logged.
import os, shutil, sys
from pathlib import Path

state = Path(os.environ["FAKE_GH"])
args = sys.argv[1:]
with (state / "gh-calls.txt").open("a") as log:
    log.write(" ".join(arg for arg in args if not arg.startswith("body=")) + "\\n")
if args[:2] == ["run", "download"]:
    shutil.copytree(state / "artifact", args[args.index("--dir") + 1], dirs_exist_ok=True)
elif "matching-refs" in " ".join(args):
    print("refs/heads/lipseg-plots/pr-3\\nrefs/heads/lipseg-plots/pr-7")
elif any(arg.startswith("repos/owner/repo/pulls/") for arg in args):
    print("closed" if args[-3].endswith("/3") else "open")
elif "POST" in args:
    (state / "posted.md").write_text(args[args.index("-f") + 1].removeprefix("body="))
"""


def git_output(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def run_comment_job(tmp_path: Path, artifact: Path, report_output: str) -> str:
    """The comment job's steps, in order, against a fake gh and a bare repository on disk as GitHub; returns
    the comment it posts."""
    import shutil

    server_repo = tmp_path / "server" / "owner" / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(server_repo)], check=True)
    shutil.copytree(artifact, tmp_path / "artifact")
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "gh").write_text(FAKE_GH.format(python=sys.executable))
    (fake_bin / "gh").chmod(0o755)
    job = load(WORKFLOWS["pipeline"].read_text(encoding="utf-8"))["jobs"]["comment"]
    workspace = tmp_path / "comment-workspace"
    workspace.mkdir()
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_GH": str(tmp_path),
        "GITHUB_SERVER_URL": f"file://{tmp_path}/server",
        "GITHUB_REPOSITORY": "owner/repo",
        "GITHUB_RUN_ID": "42",
        "GH_TOKEN": "token",
        "GH_REPO": "owner/repo",
        "PR_NUMBER": "7",
        "HEAD_SHA": "0" * 40,
        "REPORT": report_output.split("\n", 1)[1].rsplit("\n", 2)[0],
        "PLOTS_URL": "https://example.invalid/artifact",
    }
    outputs = {}
    for step in job["steps"]:
        (tmp_path / "step-output").write_text("")
        step_env = env | {"GITHUB_OUTPUT": str(tmp_path / "step-output")}
        step_env |= {"IMAGES": outputs.get("markdown", "")} if "IMAGES" in step.get("env", {}) else {}
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]], cwd=workspace, env=step_env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{step['name']}: {done.stdout}{done.stderr}"
        text = (tmp_path / "step-output").read_text()
        if text.startswith("markdown<<"):
            outputs["markdown"] = text.split("\n", 1)[1].rsplit("\n", 2)[0]
    return (tmp_path / "posted.md").read_text()
