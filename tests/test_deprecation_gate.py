"""The deprecation gate (tests/deprecations.py) catches what it must and nothing else:
a deprecation warned or logged by a library because our code called it fails the
test; the same announcement caused by another library's call does not."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from tests.deprecations import DeprecationGate

LIBS = {
    # a library announcing deprecations both ways transformers does
    "fakelib": '''
        import logging
        import warnings

        def old_warned():
            warnings.warn("old_warned is deprecated, use new()", FutureWarning)

        def old_logged():
            logging.getLogger("transformers.fakelib").warning("`old_logged` is deprecated. Use `new` instead.")

        def fine():
            logging.getLogger("transformers.fakelib").warning("a plain warning")
    ''',
    # another library that calls the old names itself
    "otherlib": '''
        import fakelib

        def uses_old():
            fakelib.old_warned()
            fakelib.old_logged()
    ''',
}


@pytest.fixture
def libs(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    for name, code in LIBS.items():
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(site))
    yield {name: importlib.import_module(name) for name in LIBS}
    for name in LIBS:
        sys.modules.pop(name, None)


def test_gate_flags_only_calls_from_our_code(libs, fail_on_deprecations_from_our_code):
    outer = fail_on_deprecations_from_our_code
    with DeprecationGate() as gate, pytest.warns(FutureWarning):
        libs["fakelib"].old_warned()
        libs["fakelib"].old_logged()
        libs["fakelib"].fine()
    assert len(gate.found) == 2, gate.found
    assert all("tests/test_deprecation_gate.py" in f for f in gate.found), gate.found
    assert "FutureWarning: old_warned is deprecated" in gate.found[0] and "`old_logged` is deprecated" in gate.found[1]

    with DeprecationGate() as gate, pytest.warns(FutureWarning):
        libs["otherlib"].uses_old()
    assert gate.found == []
    # the autouse gate of this very test saw the same: clear what we provoked on purpose
    outer.found.clear()
