"""What one job may use when several share a machine: its share of the CPU threads, and a GPU of its own."""

from __future__ import annotations

import fcntl
import getpass
import itertools
import os
import resource
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def use_cpu_threads(requested: int | None) -> int:
    """Size torch's intra-op pool and return it: `requested`, else the job's SLURM allocation, else torch's
    default capped by the CPUs this process may run on.

    The local parallel launcher (joblib) gives each worker OMP_NUM_THREADS = cores // n_jobs, which torch's
    default already follows; the cap covers containers and cgroups that torch's core count ignores.
    """
    if requested:
        threads = requested
    elif os.environ.get("SLURM_CPUS_PER_TASK"):
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])
    else:
        threads = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    return threads


def image_threads(requested: int | None) -> int:
    """Threads for image work (decoding a cache, assembling batches for a GPU): `requested`, else the CPUs this
    job may run on (its SLURM or cgroup CPU set, not the machine's core count), at most 8."""
    return requested or min(8, len(os.sched_getaffinity(0)))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux: VmHWM of the process's own address space. Its ru_maxrss would also count the memory of the parent
    that forked it (a launcher, a benchmark script) before exec, and report that instead of the job's.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


@contextmanager
def gpu_of_its_own(device: str) -> Iterator[None]:
    """With several visible GPUs, make the GPU of the lowest job slot free on this machine the current device.

    Slots are file locks, released when the job ends or its process dies, so N parallel jobs spread over the
    GPUs (slot k takes GPU k mod count). A SLURM job sees only its own GPU: nothing to choose there.
    """
    if device == "cpu" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        yield
        return
    slots = Path(tempfile.gettempdir()) / f"rifle-bench-{getpass.getuser()}-gpu-slots"
    slots.mkdir(exist_ok=True)
    for slot in itertools.count():
        with open(slots / f"{slot}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            torch.cuda.set_device(slot % torch.cuda.device_count())
            yield
            return
