"""Every private Optuna (and torchvision, timm) name we build on is where we expect it, with the
signature we call it with: an upgrade that moves or changes one fails here, naming the symbol,
instead of somewhere inside a running job or trial."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import optuna
import pytest
from torchvision.transforms import v2

from automl.search import _optuna
from storage import optuna_storage
from workers.train import device_augment, distill

CALLABLES = {**_optuna.PRIVATE_NAMES, **optuna_storage.PRIVATE_NAMES, **distill.PRIVATE_NAMES}
ATTRIBUTES = {**_optuna.PRIVATE_ATTRIBUTES, **optuna_storage.PRIVATE_ATTRIBUTES,
              **device_augment.PRIVATE_ATTRIBUTES}


def resolve(dotted: str) -> Any:
    """The object at `package.module.Class.attribute`, trying the longest module path first."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


@pytest.mark.parametrize("dotted", sorted(CALLABLES))
def test_a_private_callable_keeps_its_place_and_parameters(dotted: str) -> None:
    try:
        target = resolve(dotted)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"optuna {optuna.__version__}: {dotted} is gone ({error})")
    parameters = tuple(inspect.signature(target).parameters)
    assert parameters[: len(CALLABLES[dotted])] == CALLABLES[dotted], (
        f"optuna {optuna.__version__}: {dotted}{parameters} no longer takes {CALLABLES[dotted]}")


def instances(dotted: str, tmp_path: Path) -> list[Any]:
    """Objects of the class to look at: instance attributes exist only on instances."""
    storage = optuna_storage.optuna_storage(f"sqlite:///{tmp_path / 'names.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    makers = {
        "optuna.pruners.SuccessiveHalvingPruner": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "optuna.pruners.HyperbandPruner": lambda: optuna.pruners.HyperbandPruner(),
        "optuna.samplers.TPESampler": lambda: optuna.samplers.TPESampler(group=True,
                                                                         multivariate=True),
        "optuna.search_space.group_decomposed._GroupDecomposedSearchSpace":
            lambda: resolve(dotted)(),
        "optuna.study.Study": lambda: study,
        "optuna.trial.Trial": lambda: trial,
        "optuna.trial.FrozenTrial": lambda: study.trials[0],
        "optuna.storages._cached_storage._CachedStorage": lambda: storage,
        "optuna.storages._cached_storage._StudyInfo":
            lambda: next(iter(storage._studies.values())),
        "torchvision.transforms.v2.AutoAugment":
            lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
    }
    maker = makers.get(dotted)
    return [maker()] if maker is not None else [resolve(dotted)]  # class attributes


@pytest.mark.parametrize("dotted", sorted(ATTRIBUTES))
def test_a_private_attribute_is_still_there(dotted: str, tmp_path: Path) -> None:
    try:
        objects = instances(dotted, tmp_path)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{version(dotted)}: {dotted} is gone ({error})")
    for obj in objects:
        missing = [name for name in ATTRIBUTES[dotted] if not hasattr(obj, name)]
        assert not missing, f"{version(dotted)}: {dotted} has no {', '.join(missing)}"


def version(dotted: str) -> str:
    package = dotted.partition(".")[0]
    return f"{package} {importlib.import_module(package).__version__}"


@pytest.mark.parametrize("policy", ["RandAugment", "TrivialAugmentWide", "AutoAugment"])
def test_torchvisions_op_tables_hold_what_the_device_policies_read(policy: str) -> None:
    """Each op: (magnitudes for (bins, height, width), or None; whether the sign flips), and
    AutoAugment's sub-policies: pairs of (op, probability, magnitude bin or None)."""
    transform = getattr(v2, policy)
    space = transform._AUGMENTATION_SPACE
    assert space and all(callable(make) and isinstance(signed, bool)
                         for make, signed in space.values())
    for make, _ in space.values():
        values = make(10, 32, 32)
        assert values is None or tuple(values.shape) == (10,)
    if policy == "AutoAugment":
        for sub in v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies:
            for name, probability, magnitude in sub:
                assert name in space and 0 <= probability <= 1
                assert magnitude is None or isinstance(magnitude, int)


def test_the_bracket_view_allows_what_optunas_allows() -> None:
    """Our Hyperband bracket view copies the whitelist of Optuna's (a class local to
    `HyperbandPruner._create_bracket_study`); a new entry there must come here too."""
    pruner = optuna.pruners.HyperbandPruner()
    study = optuna.create_study(pruner=pruner)
    optunas = optuna.pruners.HyperbandPruner._create_bracket_study(pruner, study, 0)
    assert frozenset(type(optunas)._VALID_ATTRS) == _optuna._BracketStudy._VALID_ATTRS
