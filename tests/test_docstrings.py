"""Every Examples section in the package's docstrings runs and prints what it says.

A docstring that disagrees with the code is worse than none (pylidc's fault);
running them all keeps them honest.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import nodulegrowth

# __main__ runs the command line on import; it has no docstring examples
MODULES = sorted(m.name for m in pkgutil.iter_modules(nodulegrowth.__path__, "nodulegrowth.")
                 if m.name != "nodulegrowth.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
