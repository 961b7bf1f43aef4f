"""Work around a reference leak in atheris's comparison tracing (atheris 2.x/3.0.0).

Every ``==``, ``!=``, ``<``... in instrumented code calls ``atheris._trace_cmp``, whose native
version returns ``PyObject_RichCompare``'s new reference as a ``py::handle``; pybind11 adds a
reference on return, so every comparison result is left with one reference too many. For
``True``/``False`` that is harmless, but the decoders compare arrays (``symbols != escape``,
``runs < 0``...): each such comparison leaked a whole numpy/torch result, and the RSS of a
fuzzing run grew with the number of executions until ``-rss_limit_mb`` stopped it (a single
10-minute run: 273 -> 517 MB at 349k executions). The result of the native function has a
reference count one higher than a plain comparison's (measured: 3 instead of 2 under
``sys.getrefcount``); :func:`install` wraps the function to drop that reference.
"""

from __future__ import annotations

import ctypes
import sys

_decref = ctypes.pythonapi.Py_DecRef
_decref.argtypes = [ctypes.py_object]
_decref.restype = None


def install() -> None:
    """Replace ``atheris._trace_cmp`` by a wrapper that releases the surplus reference.

    Call it from the fuzz target's first execution: ``atheris.Fuzz()`` installs the native
    tracing function when fuzzing starts, and the instrumented bytecode looks the attribute
    up on the module at every comparison, so the wrapper takes effect at once."""
    module = sys.modules["atheris"]
    native = module._trace_cmp
    if getattr(native, "_penjing_wrapped", False):
        return

    def trace_cmp(left, right, opid, idx, left_is_const):
        result = native(left, right, opid, idx, left_is_const)
        if result is not True and result is not False:  # bools: a leaked count costs nothing
            _decref(result)
        return result

    trace_cmp._penjing_wrapped = True
    module._trace_cmp = trace_cmp


def surplus_references() -> int:
    """How many references too many the current ``atheris._trace_cmp`` leaves on a comparison
    result (1 for the native function while fuzzing, 0 once :func:`install` ran)."""
    probe = _Probe()
    # the opid is Py_EQ (2); from Python 3.12 on, atheris expects it shifted as COMPARE_OP's arg
    opid = 2 << 4 if sys.version_info >= (3, 12) else 2
    before = sys.getrefcount(_Probe.result)
    result = sys.modules["atheris"]._trace_cmp(probe, 0, opid, 0, False)
    del result
    return sys.getrefcount(_Probe.result) - before


class _Probe:
    """An object whose ``==`` returns one long-lived object (not a bool), to count references."""

    result = object()

    def __eq__(self, other):
        return self.result

    __hash__ = object.__hash__


def fuzz_target(watch, run):
    """libFuzzer's ``TestOneInput`` for both harnesses: ``run(data)`` under ``watch``'s CPU and
    RSS limits (:class:`limits.Watch`), with :func:`install` done on the first execution."""
    started = False

    def test_one_input(data: bytes) -> None:
        nonlocal started
        if not started:  # atheris installs its comparison tracer when fuzzing starts
            install()
            started = True
        watch.run(run, data)

    return test_one_input
