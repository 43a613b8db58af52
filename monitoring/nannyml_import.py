"""Import the four NannyML calculators the analysis uses, without the parts of NannyML it never runs.

``import nannyml`` executes the package's ``__init__``, which imports every calculator NannyML has: the
domain-classifier drift and DLE estimators pull FLAML and, through FLAML, MLflow; the plotting components pull
``statsmodels.api`` for density plots. None of that is used to compute drift, CBPE or realised performance,
and together it is about half of ``import nannyml`` (``python -X importtime``;
``benchmarks/monitoring_benchmark.py`` measures both ways). Here:

- the packages ``nannyml``, ``nannyml.drift`` and ``nannyml.performance_estimation`` are registered without
  running their ``__init__`` (only the submodules named below are imported); the first time anything reads a
  name such a package would have exported, its real ``__init__`` runs, so ``import nannyml; nannyml.DLE`` still
  works afterwards in the same process;
- ``statsmodels.api`` is registered with :class:`importlib.util.LazyLoader`: it loads on first attribute access
  (only NannyML's plotting and distribution calculators use it). NannyML reaches it as ``from statsmodels
  import api``, which leaves a lazy module alone; a plain ``import seaborn`` (the plots' other heavy import)
  reads the module's ``__spec__`` and so loads it at once on Python 3.11, which is why seaborn is not deferred.

If ``nannyml`` is already imported in full, nothing is replaced.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any

_PACKAGES_WITHOUT_INIT = ("nannyml", "nannyml.drift", "nannyml.performance_estimation")
_LAZY_MODULES = ("statsmodels.api",)
_lock = threading.Lock()


@dataclass(frozen=True)
class Calculators:
    """The NannyML classes :mod:`monitoring.analysis` runs."""

    UnivariateDriftCalculator: Any
    DataReconstructionDriftCalculator: Any
    CBPE: Any
    PerformanceCalculator: Any


def _spec(name: str) -> importlib.machinery.ModuleSpec:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"{name} is not installed", name=name)
    return spec


def _attach(name: str, module: types.ModuleType) -> None:
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _package_without_init(name: str) -> None:
    """Register package ``name`` with its ``__init__`` deferred until a name it exports is first read."""
    if name in sys.modules:
        return
    spec = _spec(name)
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    completed = threading.Event()

    def complete(attribute: str) -> Any:
        # PEP 562 module __getattr__: called only for names the module does not have yet.
        if not completed.is_set() and not attribute.startswith("__"):
            completed.set()
            assert loader is not None  # checked by _spec
            loader.exec_module(module)  # the package's real __init__ (its submodules already imported are reused)
            if attribute in module.__dict__:
                return module.__dict__[attribute]
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    module.__getattr__ = complete  # type: ignore[method-assign]
    _attach(name, module)


def _lazy_module(name: str) -> None:
    """Register ``name`` so that it is executed on first attribute access, not on import."""
    if name in sys.modules:
        return
    try:
        spec = _spec(name)
    except ModuleNotFoundError:
        return  # an optional plotting dependency that is not installed: nothing to defer
    assert spec.loader is not None  # checked by _spec
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    _attach(name, module)
    loader.exec_module(module)


def import_calculators() -> Calculators:
    """The drift, CBPE and realised-performance calculators (see the module docstring for what is skipped)."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML reports usage over the network otherwise
    with _lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "nannyml" not in sys.modules:
            _package_without_init("nannyml")
            # Read by nannyml.usage_logging at import; the deferred __init__ would otherwise run to provide it.
            setattr(sys.modules["nannyml"], "__version__", importlib.metadata.version("nannyml"))  # noqa: B010
        for name in _PACKAGES_WITHOUT_INIT[1:]:
            _package_without_init(name)
        for name in _LAZY_MODULES:
            _lazy_module(name)
        univariate = importlib.import_module("nannyml.drift.univariate.calculator")
        reconstruction = importlib.import_module("nannyml.drift.multivariate.data_reconstruction.calculator")
        cbpe = importlib.import_module("nannyml.performance_estimation.confidence_based.cbpe")
        performance = importlib.import_module("nannyml.performance_calculation.calculator")
    return Calculators(
        UnivariateDriftCalculator=univariate.UnivariateDriftCalculator,
        DataReconstructionDriftCalculator=reconstruction.DataReconstructionDriftCalculator,
        CBPE=cbpe.CBPE,
        PerformanceCalculator=performance.PerformanceCalculator,
    )
