"""The docstrings' examples run (issue 19, item 8), for every poolcore module, so an example that
drifts from the code fails here; and each public module class documents what torch.nn's do."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import poolcore

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(poolcore.__path__, prefix="poolcore.") if not info.ispkg
)
MODULES.insert(0, "poolcore")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, extraglobs={"torch": torch, "poolcore": poolcore}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_runner_sees_a_failing_example() -> None:
    """The premise: a wrong example fails (the runner is not blind)."""

    def wrong() -> None:
        """>>> 1 + 1
        3
        """

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(wrong, "wrong"):
        runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1


PUBLIC = [
    cls
    for name in poolcore.nn.__all__
    if inspect.isclass(cls := getattr(poolcore.nn, name)) and issubclass(cls, torch.nn.Module)
]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_module_docstrings_read_like_torchs(cls: type) -> None:
    """A summary, the output size (formula or rule), ``Args:`` with ``Default:`` on every optional
    argument, a ``Shape:`` section and an example."""
    doc = inspect.getdoc(cls) or ""
    assert doc.splitlines()[0].strip(), cls
    for section in ("Args:", "Shape:", "Example::", ">>> "):
        assert section in doc, f"{cls.__name__} lacks {section!r}"
    assert re.search(r"H_\{?out\}?|L_\{?out\}?|output size|Output:", doc), cls
    signature = inspect.signature(cls)
    args = doc.split("Args:")[1].split("Shape:")[0]
    for param in signature.parameters.values():
        if param.name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if param.default is not inspect.Parameter.empty and param.default is not None:
            entry = re.search(rf"^ {{4}}{param.name}:(.*?)(?=^ {{4}}\w+:|\Z)", args, re.M | re.S)
            assert entry is not None, f"{cls.__name__} does not document {param.name}"
            assert "Default:" in entry.group(1), f"{cls.__name__}.{param.name} has no 'Default:'"
