"""Every exception the project defines is part of the one tree of models/errors.py, and the
tree drawn in its docstring names them all."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from models import errors
from models.errors import CitystreamError

PACKAGES = ("models", "kpi", "kinds", "connectors", "ingest", "streams", "dashboard", "opendata",
            "analysis", "sensors_sim", "deploy", "citystream")


def project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package, *(importlib.import_module(m.name) for m in pkgutil.walk_packages(
            package.__path__, f"{name}.") if not m.name.endswith("__main__"))]
        for module in modules:
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                    found[f"{module.__name__}.{obj.__name__}"] = obj
    return found


def test_every_project_exception_derives_from_citystream_error() -> None:
    found = project_exceptions()
    assert len(found) > 20
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, CitystreamError))
    assert outside == [], f"not in the tree of models/errors.py: {outside}"


def test_the_docstring_tree_names_every_exception() -> None:
    tree = errors.__doc__ or ""
    missing = sorted(name for name, cls in project_exceptions().items()
                     if f" {cls.__name__} " not in tree and cls is not CitystreamError)
    assert missing == [], f"add to the tree in models/errors.py: {missing}"
