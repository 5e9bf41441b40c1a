"""A real single-node SLURM for the tests: ``start_slurm.sh`` beside this file does the
work (install when missing, configure, start, wait for the node to be idle); this module
starts and stops it for pytest and asks it about jobs and their processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("start_slurm.sh")
# start_slurm.sh's exit status when SLURM cannot run here (not root, no packages).
CANNOT_RUN = 3


@dataclass
class Slurm:
    """A running single-node SLURM; ``env`` points its commands at it (SLURM_CONF)."""

    dir: Path
    env: dict

    def command(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def queue(self) -> list[str]:
        """Ids of the jobs pending or running."""
        return self.command("squeue", "--noheader", "--format=%i").split()

    def wait_queue_empty(self, timeout: float = 60.0) -> list[str]:
        """Wait for the queue to drain (a job being killed shows as COMPLETING a while);
        returns the jobs still there."""
        deadline = time.monotonic() + timeout
        while (jobs := self.queue()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return jobs

    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict (JobState, ExitCode, TimeLimit, StdOut, ...)."""
        out = self.command("scontrol", "--oneliner", "show", "job", str(job_id))
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id).get("JobState", "")
            if state in states or time.monotonic() > deadline:
                return state
            time.sleep(0.5)

    def job_pids(self, job_id: str) -> list[int]:
        """Process ids of the job's tasks on this node (proctrack/linuxproc's view)."""
        out = self.command("scontrol", "listpids", str(job_id), check=False)
        pids = []
        for line in out.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].isdigit():
                pids.append(int(fields[0]))
        return pids

    def freeze(self, job_id: str, keep=lambda cmdline: False) -> list[int]:
        """SIGSTOP the job's processes (but those whose command line ``keep`` accepts): a
        worker stuck mid-run (a slow file system, a long task) without spending CPU while
        the job's time runs out.  SLURM sends SIGCONT before it signals a job to end."""
        stopped = []
        for pid in self.job_pids(job_id):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if keep(cmdline.decode(errors="replace")):
                continue
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:
                pass
        return stopped


def start_slurm(where: Path) -> Slurm | str:
    """Start SLURM with its files under ``where``; the reason as a str when it cannot run
    here (the caller skips), RuntimeError when it should have started and did not."""
    env = dict(os.environ)
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(where)], capture_output=True,
                          text=True, timeout=900, env=env)
    if proc.returncode == CANNOT_RUN:
        return proc.stderr.strip() or "SLURM cannot run here"
    if proc.returncode != 0:
        raise RuntimeError(f"start_slurm.sh failed ({proc.returncode}):\n{proc.stderr}")
    env["SLURM_CONF"] = str(where / "slurm.conf")
    return Slurm(where, env)


def stop_slurm(slurm: Slurm) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(slurm.dir)], timeout=120,
                   env=slurm.env, capture_output=True)


def processes_with_env(name: str, value: str) -> list[str]:
    """Command lines of the live processes whose environment has ``name=value`` (the
    tests mark every process they start, and the jobs inherit the mark)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            status = (entry / "status").read_text()
            if "\nState:\tZ" in status:  # a zombie is gone, only not yet reaped
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{entry.name}: {cmd.strip()}")
    return found
