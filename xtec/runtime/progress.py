"""A live progress bar for work on a Dask cluster (the CLI's; the library only logs).

In-process the CLI uses ``dask.diagnostics.ProgressBar``; on a distributed
scheduler that has no effect, so a scheduler plugin counts tasks as they are
submitted and finished, and a thread draws them as a tqdm bar on stderr.
"""

from __future__ import annotations

import contextlib
import sys
import threading

from distributed.diagnostics.plugin import SchedulerPlugin


class TaskCounter(SchedulerPlugin):
    """Counts tasks submitted to and finished on the scheduler (cumulative)."""

    name = "xtec-task-counter"

    def __init__(self):
        self.submitted = 0
        self.finished = 0

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "released" and finish == "waiting":
            self.submitted += 1
        elif start == "processing" and finish == "memory":
            self.finished += 1


def _counts(dask_scheduler=None):
    plugin = dask_scheduler.plugins.get(TaskCounter.name)
    return (plugin.finished, plugin.submitted) if plugin else (0, 0)


@contextlib.contextmanager
def cluster_progress(client, interval: float = 0.5):
    """Draw finished / submitted tasks of ``client``'s scheduler while the block runs."""
    from tqdm import tqdm

    try:
        client.register_plugin(TaskCounter(), name=TaskCounter.name)
    except Exception:  # e.g. a remote scheduler that cannot import xtec: no bar
        yield
        return
    stop = threading.Event()
    bar = tqdm(total=0, unit="task", file=sys.stderr, dynamic_ncols=True, leave=True)

    def draw():
        while not stop.wait(interval):
            try:
                done, total = client.run_on_scheduler(_counts)
            except Exception:
                return
            bar.total = max(total, done)
            bar.n = done
            bar.refresh()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
