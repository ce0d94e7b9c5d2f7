"""YAML read within bounds: bombs refused in one line while the file is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from automl.errors import SpecError
from automl.search.job_file import load_spec


def test_scientific_notation_in_yaml_is_a_number(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\ndataset: {source: builtin:digits}\n"
        "space:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n  weight_decay: 5e-5\n"
    )
    spec = load_spec(job)
    assert spec.space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert spec.space["weight_decay"] == 5e-5


# A 342-byte "billion laughs": nine lists of nine aliases to the list before, 9**9 strings.
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{before}'] * 9)}]\n"
    for before, name in zip("abcdefgh", "bcdefghi", strict=True))


DEEP = "name: t\ndataset: {source: builtin:digits}\nspace: " + "[" * 20_000 + "]" * 20_000 + "\n"


AUTOML = str(Path(sys.executable).with_name("automl"))


def one_line_refusal(args: list[str], cwd: Path) -> str:
    """The command's stderr: one line, exit code 2, within a minute (the command itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOML_API_URL", "AUTOML_HOME")}
    result = subprocess.run([AUTOML, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize(("text", "message"), [
    (BILLION_LAUGHS, "refused at line 6, column 4: more than 100,000 values once its aliases are "
                     "expanded (a job spec has a few hundred)"),
    (DEEP, "refused at line 3, column 40: nested deeper than 32 levels"),
])
def test_a_yaml_bomb_is_refused_in_one_line_at_once(
    tmp_path: Path, command: str, text: str, message: str
) -> None:
    """Aliases that stand for a billion values, or nesting that would exhaust the recursion
    limit, are refused while the file is read, before anything walks them (or is stored)."""
    job = tmp_path / "job.yaml"
    job.write_text(text)
    assert one_line_refusal([command, str(job)], tmp_path) == f"error: {job}: {message}"
    assert not (tmp_path / "automl-data").exists()


def test_a_yaml_bomb_in_a_trial_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    laughs = "{a: &a [1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"{n}: &{n} [{', '.join([f'*{b}'] * 9)}]" for b, n in zip("abcdefgh", "bcdefghi",
                                                                   strict=True)) + "}"
    for value, problem in ((deep, "refused at line 1, column 34: nested deeper than 32 levels"),
                           (laughs, "more than 100,000 values once its aliases are expanded")):
        line = one_line_refusal(["train-one", "--dataset", "builtin:digits", "--set",
                                 f"lr={value}"], tmp_path)
        assert line.startswith("error: --set lr=...: the value is refused at line 1") and \
            problem in line, line


def test_a_structure_that_holds_itself_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndataset: {source: builtin:digits}\nspace: &s {lr: *s}\n")
    with pytest.raises(SpecError, match=r"refused at line 3, column 16: an alias inside its own "
                       r"anchor \(a structure that holds itself\)$"):
        load_spec(job)


def test_aliases_within_the_bound_are_read(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndataset: {source: builtin:digits}\n"
                   "space:\n  backbone: &small [resnet18, resnet34]\n  tutor: *small\n")
    with pytest.raises(SpecError, match=r"space\.tutor"):  # read, then judged as a spec
        load_spec(job)
