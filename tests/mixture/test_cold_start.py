"""``xtec prepare`` / the stage warm-up load every kernel a run calls (issue 29):
after them a run compiles nothing, in-process, for both covariance types.

numba broadcasts a ``numba:compile`` event for every compilation that the disk
cache could not serve; a listener counts those of xtec's kernels.
"""

from __future__ import annotations

import pytest
from conftest import run

from xtec.config import ClusterConfig
from xtec.pipeline import run_cluster


class _Compiles:
    def __init__(self):
        self.names = []

    def __enter__(self):
        from numba.core import event

        class Listener(event.Listener):
            def on_start(inner, ev):  # noqa: N805
                self.names.append(ev.data["dispatcher"].py_func.__module__ + "."
                                  + ev.data["dispatcher"].py_func.__name__)

            def on_end(inner, ev):  # noqa: N805
                pass

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self._listener)

    @property
    def xtec(self):
        return [n for n in self.names if n.startswith("xtec.")]


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_a_prepared_run_compiles_nothing(covariance, capsys, small_file, tmp_path):
    code, out, _ = run(capsys, "prepare", "--covariance", covariance)
    assert code == 0 and "kernels ready" in out and "cache:" in out
    with _Compiles() as compiles:
        run_cluster(ClusterConfig(inputs=[str(small_file)], out=str(tmp_path / "o.zarr"),
                                  covariance=covariance, k=3))
    assert compiles.xtec == []


def test_the_listener_sees_a_compilation():
    import numba

    @numba.njit
    def twice(x):
        return 2 * x

    with _Compiles() as compiles:
        twice(1)
    assert any(n.endswith(".twice") for n in compiles.names)
