"""Job specs are refused by field, and a user-narrowed space is never left."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from automl.cli import app
from automl.errors import SpecError
from automl.jobs.driver import strategy_for
from automl.search.dataset_name import dataset_name
from automl.search.job_file import load_spec
from automl.search.space import DEFAULT_BACKBONES
from automl.search.spec import parse_spec
from automl.search.strategy import portfolio_for
from workers.config import OPTIMIZERS, SCHEDULES, TrialConfig

BASE: dict[str, Any] = {"name": "t", "dataset": {"source": "builtin:digits"}}
EXAMPLES = Path(__file__).parents[2] / "examples"


def spec_error(**changes: Any) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec({**BASE, **changes})
    return str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget": {"n_trials": 0}}, "budget.n_trials: Input should be greater than or equal to 1"),
        ({"budget": {"max_epochs": 0}}, "budget.max_epochs"),
        ({"budget": {"time_limit": "soon"}}, "is not a duration"),
        ({"budget": {"time_limit": -5}}, "time_limit must be positive"),
        ({"budget": {"target": 2.0}}, "budget.target=2.0: val_accuracy lies in (0, 1]"),
        ({"resources": {"gpu": -1}}, "resources.gpu"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
        ({"strategy": {"sampler": "bayes"}}, "'tpe', 'random', 'gp', 'cmaes' or 'nsga2'"),
        ({"strategy": {"pruner": "asha"}}, "'hyperband', 'sha', 'median' or 'none'"),
        ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "can only be minimized"),
        ({"objective": {"metric": "accuracy"}}, "objective.metric"),
        ({"budgets": {}}, "budgets: unknown field"),
        ({"name": "My Job"}, "name: String should match pattern"),
        ({"name": False}, "got False (YAML reads an unquoted yes/no/on/off/true/false or number"),
        ({"dataset": {"source": "x", "val_fraction": 0.5, "test_fraction": 0.5}}, "must leave"),
        ({"space": {"backbone": ["resnet50", "resnet5O"]}}, "space.backbone: unknown backbone 'resnet5O'"),
        ({"space": {"lrr": 0.1}}, "space.lrr: unknown parameter; did you mean lr?"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "space.lr: low=0.1 must be below high=0.01"),
        ({"space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"space": {"optimizer": ["adamw", "lamb"]}}, "optimizer='lamb' is not one of"),
        ({"space": {"optimizer": {"low": 1, "high": 2}}}, "space.optimizer"),
        ({"space": {"epochs": 5}}, "space.epochs: set it with budget.max_epochs"),
        ({"space": {"milestones": [3, 6]}}, "one milestones value is a list in a list: milestones: [["),
        ({"space": {"warmup_epochs": 20}}, "warmup_epochs=20 must be in [0, epochs=10)"),
        ({"space": {"decay_rate": [0.5, 1.0]}}, "space.decay_rate: decay_rate=1.0 must be in (0, 1)"),
        ({"strategy": {"sampler_options": {"bogus": 1}}},
         "strategy.sampler_options.bogus: not an option of the random sampler; it takes none"),
        ({"strategy": {"sampler": "tpe", "sampler_options": {"seed": 3}}},
         "strategy.sampler_options.seed: not an option"),  # strategy.seed sets it
        ({"strategy": {"sampler": "tpe", "sampler_options": {"n_startup_trials": 2.5}}},
         "strategy.sampler_options.n_startup_trials: takes int, not a number"),
        ({"strategy": {"sampler": "tpe", "sampler_options": {"multivariate": 1}}},
         "strategy.sampler_options.multivariate: takes bool or null, not a whole number"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}},
         "space.lr: a log range takes no step"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": "yes"}}}, "space.lr: log is true or false"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": 1}}},
         "space.lr: step must be a positive number no larger than high - low"),
        ({"strategy": {"pruner": "hyperband", "pruner_options": {"reduction_factr": 3}}},
         "strategy.pruner_options.reduction_factr: not an option of the hyperband pruner; it "
         "takes bootstrap_count, max_resource, min_resource, reduction_factor"),
        ({"strategy": {"pruner": "median", "pruner_options": {"n_startup_trials": -1}}},
         "strategy.pruner_options: "),  # a plain value the pruner itself refuses
        ({"budget": {"max_epochs": 3}, "strategy": {"pruner_options": {"min_resource": 3}}},
         "min_resource=3 is not below budget.max_epochs=3: the pruner could never stop a trial"),
        ({"objective": {"metrics": ["val_accuracy", "val_accuracy"]}},
         "objective.metrics: val_accuracy named twice"),
        ({"objective": {"limits": {"latency_ms": -1}}},
         "objective.limits.latency_ms=-1.0: a limit must be above 0"),
        ({"objective": {"limits": {"gpu_hours": 1}}},
         "objective.limits.gpu_hours: unknown cost; limits take params_m, macs_g, latency_ms"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"], "limits": {"val_accuracy": 0.9}}},
         "objective.limits.val_accuracy: a limit is an upper bound on a cost, and val_accuracy is "
         "what the search maximizes: it contradicts the objective"),
        ({"objective": {"metrics": ["latency_ms", "params_m"]}},
         "a Pareto front is one validation metric and at least one cost"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"], "metric": "val_f1"}},
         "objective.metric=val_f1 is not the validation metric of objective.metrics"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"]}, "strategy": {"pruner": "hyperband"}},
         "strategy.pruner: hyperband cannot prune a Pareto front"),
        ({"objective": {"latency": {"threads": 0}}}, "objective.latency.threads"),
        ({"checkpoints": {"keep_trials": 0}}, "checkpoints.keep_trials"),
    ],
)
def test_bad_specs_name_the_field(changes: dict[str, Any], message: str) -> None:
    assert message in spec_error(**changes)


def test_missing_dataset_is_named() -> None:
    with pytest.raises(SpecError, match="dataset: required field is missing"):
        parse_spec({"name": "t"})


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("name: t\ndataset:\n  source: [builtin:digits\n")
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+, column \d+"):
        load_spec(bad)


def test_examples_are_valid() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name


def test_a_job_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(binary)
    with pytest.raises(SpecError, match="is a directory; pass the job file"):
        load_spec(tmp_path)


def test_a_relative_dataset_path_is_read_from_the_job_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text(yaml.safe_dump({**BASE, "dataset": {"source": "../data/flowers"}}))
    monkeypatch.chdir("/")  # wherever the user runs it from, and wherever trials run
    assert load_spec(job).dataset.source == str(tmp_path / "data" / "flowers")


def test_a_published_model_names_its_dataset_without_the_servers_path(tmp_path: Path) -> None:
    """A model card goes to the Hugging Face Hub as it is: `dataset.name`, else the source's
    last folder (a manifest's or a parquet file's folder)."""
    folder = tmp_path / "srv" / "flowers"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text("path,label\n")
    named = parse_spec({**BASE, "dataset": {"source": str(folder), "name": "Oxford flowers"}})
    assert dataset_name(named.dataset.source, named.dataset.name) == "Oxford flowers"
    assert dataset_name(str(folder)) == "flowers"
    assert dataset_name(str(folder / "labels.csv")) == "flowers"
    assert dataset_name("builtin:digits") == "digits"
    with pytest.raises(SpecError, match=r"dataset\.name"):
        parse_spec({**BASE, "dataset": {"source": str(folder), "name": ""}})


def test_cli_errors_keep_brackets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error text is printed as is: a regex or a path with [ ] is not eaten as rich markup."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**BASE, "name": "My Job"}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    assert "^[a-z0-9][a-z0-9-]{0,40}$" in result.output


@pytest.mark.parametrize("args", [["run", "missing.yaml"], ["run", "{job}"]])
def test_run_refuses_bad_specs_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**BASE, "budget": {"n_trials": -1}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [a.format(job=job) for a in args])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert not (tmp_path / "automl-data").exists()


def sample_configs(
    spec_changes: dict[str, Any], n: int, n_images: int = 2000
) -> list[dict[str, Any]]:
    spec = parse_spec({**BASE, **spec_changes})
    strategy = strategy_for(spec, n_images)
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "s")
    configs = []
    for _ in range(n):
        trial = strategy.ask(study)
        configs.append(strategy.space.sample(trial))
        study.tell(trial, 0.5)
    return configs


def test_default_space_is_conditional_and_runnable() -> None:
    configs = sample_configs({"strategy": {"seed": 3}}, 60)
    for config in configs:
        TrialConfig.from_dict(config)  # every sample is a config the engine accepts
        assert config["backbone"] in DEFAULT_BACKBONES
        assert ("momentum" in config) == (config["optimizer"] == "sgd")
        assert ("ra_magnitude" in config) == (config["augment"] == "randaugment")
        assert ("cycle_epochs" in config) == (config["schedule"] == "cyclic")
    assert len({c["schedule"] for c in configs}) >= 5
    assert len({c["augment"] for c in configs}) >= 4


def test_narrowed_space_is_never_left() -> None:
    space = {
        "backbone": ["resnet18", "convnext_atto"],
        "optimizer": "sgd",
        "lr": {"low": 0.01, "high": 0.05, "log": True},
        "momentum": {"low": 0.85, "high": 0.9},
        "schedule": ["cosine", "step"],
        "augment": "randaugment",
        "ra_magnitude": {"low": 3, "high": 5},
        "batch_size": [32],
        "img_size": 64,
        "layer_decay": [0.7, 0.9],
    }
    for warm in (True, False):
        for config in sample_configs({"space": space, "strategy": {"warm_start": warm}}, 40):
            assert config["backbone"] in ("resnet18", "convnext_atto")
            assert config["optimizer"] == "sgd"
            assert 0.01 <= config["lr"] <= 0.05
            assert 0.85 <= config["momentum"] <= 0.9
            assert config["schedule"] in ("cosine", "step")
            assert config["augment"] == "randaugment" and 3 <= config["ra_magnitude"] <= 5
            assert config["batch_size"] == 32 and config["img_size"] == 64
            assert config["layer_decay"] in (0.7, 0.9)


def test_warm_start_tries_the_portfolio_first() -> None:
    PORTFOLIO = portfolio_for(2000)
    first, second = sample_configs({"budget": {"max_epochs": 50}, "strategy": {"warm_start": True}}, 2)
    assert {k: first[k] for k in PORTFOLIO[0]} == PORTFOLIO[0]
    assert {k: second[k] for k in PORTFOLIO[1]} == PORTFOLIO[1]


def test_a_big_dataset_starts_from_a_cheaper_portfolio() -> None:
    """What pays off in the first hours differs with the dataset's size: a job on 80,000 images
    starts with a small backbone where one on 1,000 starts with a bigger one."""
    small, big = (sample_configs({"budget": {"max_epochs": 50}, "strategy": {"warm_start": True}},
                                 1, n_images)[0] for n_images in (1_000, 80_000))
    assert small["backbone"] == portfolio_for(1_000)[0]["backbone"]
    assert big["backbone"] == portfolio_for(64_000)[0]["backbone"]
    assert big["backbone"].startswith("edgenext") and not small["backbone"].startswith("edgenext")


def test_warm_start_keeps_only_what_the_job_can_run() -> None:
    """A portfolio value outside the job's space (or its epoch budget) is sampled instead."""
    PORTFOLIO = portfolio_for(2000)
    assert PORTFOLIO[0]["warmup_epochs"] > 1 and PORTFOLIO[0]["batch_size"] != 32
    first = sample_configs({"budget": {"max_epochs": 3}, "space": {"batch_size": [32, 64]},
                            "strategy": {"warm_start": True}}, 1)[0]
    assert first["warmup_epochs"] <= 1 and first["batch_size"] in (32, 64)
    assert first["lr"] == PORTFOLIO[0]["lr"] and first["backbone"] == PORTFOLIO[0]["backbone"]


def test_scientific_notation_in_yaml_is_a_number(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\ndataset: {source: builtin:digits}\n"
        "space:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n  weight_decay: 5e-5\n"
    )
    spec = load_spec(job)
    assert spec.space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert spec.space["weight_decay"] == 5e-5


@pytest.mark.parametrize("damage", ["corrupt", "empty_class", "one_class"])
def test_run_refuses_a_broken_dataset_before_storing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, color_folder: Path, damage: str
) -> None:
    import shutil

    if damage == "corrupt":
        (color_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    elif damage == "empty_class":
        (color_folder / "green").mkdir()
    else:
        shutil.rmtree(color_folder / "blue")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "dataset": {"source": str(color_folder)}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    expected = {"corrupt": "cannot decode image", "empty_class": "has no images",
                "one_class": "needs at least two class folders"}[damage]
    assert "error: dataset:" in message and expected in message
    assert not (tmp_path / "automl-data").exists()


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
                   "space:\n  backbone: &small [resnet18, resnet34]\n  teacher: *small\n")
    with pytest.raises(SpecError, match=r"space\.teacher"):  # read, then judged as a spec
        load_spec(job)


# --- property tests of the validators -----------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("name", "dataset", "objective", "budget", "max_concurrent_trials", "resources",
          "max_failures", "strategy", "space")
SPEC_LIKE = st.fixed_dictionaries(
    {"name": st.sampled_from(["t", "ok-job", "Bad Name", ""]) | JSON_SCALARS,
     "dataset": st.just({"source": "builtin:digits"}) | JSON_VALUES},
    optional={field: JSON_VALUES for field in FIELDS[2:]}
    | {"budget": st.fixed_dictionaries({}, optional={
        "n_trials": JSON_SCALARS, "max_epochs": JSON_SCALARS, "time_limit": JSON_SCALARS,
        "target": JSON_SCALARS})},
)


@given(payload=SPEC_LIKE)
@hypothesis_settings(max_examples=300, deadline=None)
def test_any_payload_is_a_spec_or_a_spec_error(payload: dict[str, Any]) -> None:
    """Whatever arrives, validation says yes or names the problem: never another exception
    (that would be a 500 over HTTP), and what it accepts is storable JSON that reads back the
    same."""
    import json

    try:
        spec = parse_spec(payload)
    except SpecError as error:
        assert str(error).strip()
        return
    stored = json.dumps(spec.model_dump(mode="json"), allow_nan=False)
    assert parse_spec(json.loads(stored)) == spec


@given(path=st.sampled_from([("budget", "time_limit"), ("budget", "target"), ("space", "lr"),
                             ("space", "weight_decay"), ("strategy", "sampler_options", "x"),
                             ("resources", "cpu"), ("dataset", "val_fraction")]),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_a_non_finite_number_anywhere_is_refused_by_name(path: tuple[str, ...], value: float) -> None:
    payload: dict[str, Any] = {**BASE, "dataset": dict(BASE["dataset"])}
    node = payload
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    message = spec_error(**{k: v for k, v in payload.items() if k != "name"})
    assert ".".join(path[:2]) in message, message


CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    ["\x7f", "\x85", "\x9f"])
STRING_FIELDS = [("dataset", "source"), ("dataset", "image_column"), ("dataset", "label_column"),
                 ("tracking", "mlflow"), ("tracking", "experiment"), ("name",),
                 ("space", "backbone"), ("space", "pretrained"), ("strategy", "sampler_options", "x")]


@given(path=st.sampled_from(STRING_FIELDS), before=st.text(max_size=20),
       control=CONTROL, after=st.text(max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_a_control_character_in_any_string_is_refused_by_name(
    path: tuple[str, ...], before: str, control: str, after: str
) -> None:
    """A NUL in a path reached `Path.resolve()` (a 500 over HTTP); every string of a spec is
    refused at validation with its field, never another exception."""
    payload: dict[str, Any] = {**BASE, "dataset": dict(BASE["dataset"])}
    node = payload
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = before + control + after
    with pytest.raises(SpecError) as caught:
        parse_spec(payload)
    message = str(caught.value)
    assert "holds a control character" in message, message
    assert ".".join(path) in message.replace(": a key", ""), message


@given(path=st.text(max_size=40) | st.sampled_from(["/", "/..", "/\x00", "/a/../../b"]),
       uri=st.none() | st.text(max_size=40))
@hypothesis_settings(max_examples=300, deadline=None)
def test_the_http_checks_refuse_by_name_or_pass_never_fail_otherwise(
    tmp_path_factory: pytest.TempPathFactory, path: str, uri: str | None
) -> None:
    """Whatever a spec could hold (checked here without validation's own refusals), the roots
    and the tracking check answer with a SpecError or let it through."""
    from automl.jobs.admission import require_tracking_server, require_under_roots
    from automl.search.spec import JobSpec

    root = tmp_path_factory.getbasetemp().resolve()
    spec = parse_spec(BASE)
    unchecked = JobSpec.model_construct(**{
        **dict(spec), "dataset": spec.dataset.model_construct(**{**dict(spec.dataset),
                                                                 "source": path}),
        "tracking": spec.tracking.model_construct(**{**dict(spec.tracking), "mlflow": uri})})
    unchecked._space = spec.search_space()
    for check in (lambda: require_under_roots(unchecked, (root,)),
                  lambda: require_under_roots(unchecked, ()),
                  lambda: require_tracking_server(unchecked, "http://mlflow:5000"),
                  lambda: require_tracking_server(unchecked, None)):
        try:
            check()
        except SpecError as error:
            assert str(error).strip()


def test_validation_reads_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only a job file's loading opens the weights it names: over HTTP, what validation found
    on the disk would answer for files outside the dataset roots."""
    import workers.model

    def opened(path: str) -> None:
        raise AssertionError(f"validation opened {path}")

    monkeypatch.setattr(workers.model, "check_weights_file", opened)
    spec = parse_spec({**BASE, "space": {"pretrained": ["/etc/shadow", str(tmp_path / "w.pth")]}})
    assert spec.search_space().pretrained() == ("/etc/shadow", str(tmp_path / "w.pth"))
    monkeypatch.undo()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**BASE, "space": {"pretrained": "w.pth"}}))
    with pytest.raises(SpecError, match=r"job.yaml is invalid:\n  space.pretrained: pretrained "
                       "weights file .*w.pth does not exist"):
        load_spec(job)


def test_a_job_builds_its_search_space_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validating a spec builds its space (every override checked against the engine, backbone
    names against timm); every later part of the job reuses it rather than paying for that
    again."""
    from automl.jobs.preflight import check_pretrained_weights
    from automl.search import space as space_module
    from automl.search.paths import paths_read

    built: list[object] = []
    real = space_module.SearchSpace.from_spec.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any) -> Any:
        built.append(args)
        return real(cls, *args)

    monkeypatch.setattr(space_module.SearchSpace, "from_spec", classmethod(counting))
    spec = parse_spec({**BASE, "space": {"backbone": ["resnet18", "resnet34"], "pretrained": False}})
    strategy_for(spec, 1797)
    check_pretrained_weights(spec)
    paths_read(spec)
    spec.model_copy()
    assert len(built) == 1


class DrawnTrial:
    """Stands in for an Optuna trial whose every answer hypothesis draws: each branch of the
    define-by-run space, and the ends of each range, get tried."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.data.draw(st.sampled_from(list(choices)), label=name)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return low + step * self.data.draw(st.integers(0, (high - low) // step), label=name)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        if step is not None:
            return low + step * self.data.draw(st.integers(0, int((high - low) // step)), label=name)
        return self.data.draw(st.floats(low, high), label=name)


# overrides that set parameters against each other: schedules, their epochs, lrs
OVERRIDE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "schedule": st.sampled_from(SCHEDULES),
    "optimizer": st.sampled_from(OPTIMIZERS),
    "warmup_epochs": st.integers(0, 12),
    "decay_epochs": st.integers(0, 12),
    "cycle_epochs": st.integers(0, 12),
    "plateau_patience": st.integers(0, 4),
    "milestones": st.lists(st.integers(0, 12), max_size=3),
    "decay_rate": st.sampled_from([0.0, 0.1, 0.5, 0.99, 1.0]),
    "lr": st.sampled_from([1e-6, 1e-4, 1e-2, 0.1, 1.0]),
    "warmup_lr": st.sampled_from([0.0, 1e-6, 1e-4, 1e-2, 0.1, 1.0]),
    "min_lr": st.sampled_from([0.0, 1e-6, 1e-3, 0.1]),
}


@st.composite
def overrides(draw: st.DrawFn) -> dict[str, Any]:
    """A `space:` of fixed values, choices and ranges for some of OVERRIDE_VALUES."""
    names = draw(st.lists(st.sampled_from(sorted(OVERRIDE_VALUES)), max_size=3, unique=True))
    space: dict[str, Any] = {}
    for name in names:
        values = OVERRIDE_VALUES[name]
        form = draw(st.sampled_from(["value", "choices", "range"]))
        if form == "choices" or name == "milestones":  # one list value is a list in a list
            space[name] = draw(st.lists(values, min_size=1, max_size=3))
        elif form == "range" and name not in ("schedule", "optimizer"):
            low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
            space[name] = {"low": low, "high": high}
        else:
            space[name] = draw(values)
    return space


def run_every_epoch(config: TrialConfig) -> None:
    """Build the trial's optimizer and schedule and step it through all its epochs."""
    import torch

    from workers.optim import EpochSchedule, create_optimizer

    optimizer = create_optimizer(config, torch.nn.Linear(2, 2))
    schedule = EpochSchedule(config, optimizer)
    for epoch in range(config.epochs):
        optimizer.step()
        schedule.step(0.5 + epoch % 2)  # a metric that stalls, for plateau
        assert math.isfinite(schedule.lr)


@pytest.mark.parametrize("max_epochs", [1, 2, 3, 4, 5, 6, 8, 10, 13, 1000])
@given(space=overrides(), data=st.data())
@hypothesis_settings(max_examples=60, deadline=None, derandomize=True)
def test_every_configuration_the_space_can_produce_is_one_a_trial_can_run(
    max_epochs: int, space: dict[str, Any], data: st.DataObject
) -> None:
    """Whatever the budget (a single epoch included) and the overrides, the spec is refused with
    one line, or every configuration its space can produce is one the engine accepts and whose
    schedule runs all its epochs: a trial that cannot is an error on every retry (a multistep
    schedule over 1 epoch had milestones [0, 0])."""
    try:
        spec = parse_spec({**BASE, "budget": {"max_epochs": max_epochs}, "space": space})
    except SpecError as error:
        assert "space." in str(error), str(error)  # refused, naming the field
        return
    sampled = spec.search_space().sample(DrawnTrial(data))  # type: ignore[arg-type]
    config = TrialConfig.from_dict({**sampled, **spec.trial_settings()})
    run_every_epoch(config)
