"""YAML read safely and within bounds: no arbitrary objects, no alias bombs, no deep nesting,
and `1e-4` read as a number. Job files and `automl` command options are read with it."""

from __future__ import annotations

import re
from typing import Any

import yaml

from automl.search.bounds import MAX_DEPTH, MAX_VALUES


class YamlRefused(yaml.MarkedYAMLError):
    """A YAML document refused for its size once its aliases are expanded, or its depth."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) that bounds what a document stands for, before it
    is constructed, and that reads `1e-4` as a number.

    Composing is cheap, and so is construction: an alias is one shared object. The cost comes
    in whatever walks the result as a tree (the spec's checks, pydantic, JSON), where a 600-byte
    "billion laughs" document of aliases nested nine deep stands for 9**9 values. So each node
    composed is counted as it would be expanded (`MAX_VALUES`), and nesting is bounded by the
    spec's own `MAX_DEPTH` before the composer recurses into it: 20,000 levels would otherwise
    end in a RecursionError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open = 0  # collections being composed around the current node
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth below)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        if self._open > MAX_DEPTH:
            raise YamlRefused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        alias = self.check_event(yaml.AliasEvent)
        self._open += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        assert node is not None  # typed optional; every event composed gives a node
        if alias:
            if id(node) not in self._expanded:  # still being composed: it holds itself
                raise YamlRefused(None, None, "an alias inside its own anchor (a structure "
                                  "that holds itself)", mark)
        else:
            self._expanded[id(node)] = self._measure(node)
        values, below = self._expanded[id(node)]
        if values > MAX_VALUES:
            raise YamlRefused(None, None, f"more than {MAX_VALUES:,} values once its aliases "
                              "are expanded (a job spec has a few hundred)", mark)
        if self._open + below > MAX_DEPTH:
            raise YamlRefused(None, None, f"nested deeper than {MAX_DEPTH} levels once its "
                              "aliases are expanded", mark)
        return node

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, levels of nesting) `node` stands for; its children are measured already."""
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            return 1, 0
        parts = [self._expanded[id(child)] for child in children]
        return 1 + sum(v for v, _ in parts), 1 + max((d for _, d in parts), default=0)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with a YAML text, and where, on one line (PyYAML's own text spans four)."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    refused = "refused" if isinstance(error, YamlRefused) else "invalid YAML"
    return f"{refused}{where}: {problem}"
