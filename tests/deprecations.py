"""Deprecations reached from our code fail the test that reaches them.

A library we build on (transformers, torch, DeepSpeed, peft, ...) announces a rename
with a ``DeprecationWarning`` / ``FutureWarning`` or, in transformers, with a logged
"... is deprecated" message, one or more releases before the old name stops working.
Our users must never be the ones to find out, so any such announcement caused by a
call from this repository's code (the package, kernels, tools, eval, the tests
themselves) fails the test, while announcements one library makes about another
(peft calling an old transformers name) stay warnings: they are not ours to fix.

"Caused by a call from our code" is decided on the stack at the moment of the
warning: leave the frames of the library that announces it; if the next frame is
ours, the call was ours. ``pyproject.toml``'s ``filterwarnings`` adds the warnings
that C code (torch operators) raises with our module as their origin.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: logged messages that announce a deprecation (transformers logs some instead of warning)
DEPRECATION_TEXT = re.compile(r"deprecat", re.IGNORECASE)
#: loggers whose messages are checked
CHECKED_LOGGERS = ("transformers", "peft", "accelerate", "DeepSpeed", "deepspeed", "datasets", "torch")


def is_ours(filename: str) -> bool:
    """A file of this repository (not of a virtualenv someone created inside it)."""
    path = str(filename)
    return path.startswith(str(REPO)) and "site-packages" not in path and "dist-packages" not in path


def _package(frame) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]


#: Python's own modules that sit between a library and the warning or log call
PYTHON_HELPERS = {"functools", "contextlib", "logging", "warnings", "typing", "inspect"}


def our_caller(frame) -> str | None:
    """``file:line`` of our frame that called into the library announcing a deprecation
    at ``frame`` (the announcing library's own frames and Python's helpers between are
    skipped), or None when the call came from another library."""
    while frame is not None and _package(frame) in PYTHON_HELPERS:
        frame = frame.f_back
    if frame is None:
        return None
    emitter = _package(frame)
    while frame is not None and not is_ours(frame.f_code.co_filename) and _package(frame) in PYTHON_HELPERS | {emitter}:
        frame = frame.f_back
    if frame is None or not is_ours(frame.f_code.co_filename):
        return None
    return f"{Path(frame.f_code.co_filename).relative_to(REPO)}:{frame.f_lineno}"


class DeprecationGate(logging.Handler):
    """Collects deprecations reached from our code while a test runs (see module doc)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.found: list[str] = []
        self._warn = warnings.warn

    # logged announcements ("`past_key_values`/`cache_params` are deprecated. ...")
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if DEPRECATION_TEXT.search(message):
            where = our_caller(sys._getframe(1))
            if where is not None:
                self.found.append(f"{record.name} logged {message!r}, reached from {where}")

    # warnings.warn(..., DeprecationWarning | FutureWarning)
    def warn(self, message, category=None, stacklevel=1, source=None, **kwargs):
        cat = category if category is not None else type(message) if isinstance(message, Warning) else UserWarning
        if issubclass(cat, (DeprecationWarning, FutureWarning)):
            where = our_caller(sys._getframe(1))
            if where is not None:
                self.found.append(f"{cat.__name__}: {message}, reached from {where}")
        return self._warn(message, category, stacklevel + 1, source, **kwargs)

    def __enter__(self):
        self.found = []
        warnings.warn = self.warn
        for name in CHECKED_LOGGERS:
            logging.getLogger(name).addHandler(self)
        _clear_transformers_once_caches()
        return self

    def __exit__(self, *exc):
        warnings.warn = self._warn
        for name in CHECKED_LOGGERS:
            logging.getLogger(name).removeHandler(self)


def _clear_transformers_once_caches() -> None:
    # transformers logs many deprecations with warning_once (an lru_cache on the message):
    # without a reset, only the first test that reaches one would see it.
    tf_logging = sys.modules.get("transformers.utils.logging")
    for name in ("warning_once", "info_once"):
        fn = getattr(tf_logging, name, None)
        if fn is not None and hasattr(fn, "cache_clear"):
            fn.cache_clear()


@pytest.fixture(autouse=True)
def fail_on_deprecations_from_our_code():
    with DeprecationGate() as gate:
        yield gate
    if gate.found:
        pytest.fail(
            "a library we build on announced a deprecation reached from our code (update the call now, "
            "before the old name is removed):\n  " + "\n  ".join(dict.fromkeys(gate.found)),
            pytrace=False,
        )
