"""Where sweep points run: in this process (--jobs 1), on a local process pool (the default), or as Ray tasks.

Each executor takes (index, job) pairs and yields (index, row) as points finish, in whatever order they finish; the
sweep puts rows back in grid order. A point's row depends only on its job (astra_driver.sweep.runner), so every
executor gives the same rows.

Ctrl-C / SIGTERM reach the sweep as astra_driver.cli.Interrupted: the pool's workers are terminated (they ignore
SIGINT themselves, so a terminal's Ctrl-C does not print a traceback per worker) and Ray tasks are cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from llm_converter.errors import PipesimError

Job = tuple[int, dict[str, Any]]
RunPoint = Callable[[dict[str, Any]], dict[str, Any]]


def default_jobs() -> int:
    return os.cpu_count() or 1


class SerialExecutor:
    """Points one after another in this process."""

    name = "serial"

    def run(self, run_point: RunPoint, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, job in jobs:
            yield index, run_point(job)


def _worker_init() -> None:
    # A forked worker inherits pipesim's SIGINT/SIGTERM handlers (they raise Interrupted); the sweep's process
    # handles the signal and terminates its workers, so a worker ignores Ctrl-C and dies plainly on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LocalPoolExecutor:
    """Points on `workers` local processes (concurrent.futures)."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, run_point: RunPoint, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not jobs:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), initializer=_worker_init)
        finished = False
        try:
            pending: dict[Future, int] = {pool.submit(run_point, job): index for index, job in jobs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        row = future.result()
                    except Exception as exc:  # the worker died (killed, out of memory): the pool is broken
                        row = {"error": f"worker process failed: {type(exc).__name__}: {exc}"}
                    yield index, row
            finished = True
        finally:
            if not finished:
                _terminate(pool)
            pool.shutdown(wait=finished, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    # concurrent.futures has no public way to stop running work; its worker processes are in _processes.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


class RayExecutor:
    """Points as Ray tasks (one CPU each): `address` "local" starts a local Ray instance with `workers` CPUs;
    anything else is passed to ray.init(address=...) ("auto", "ray://head:10001"). The cluster's workers need
    pipesim installed and the spec's files (datasets, profile bundles) at the same paths."""

    name = "ray"

    def __init__(self, address: str, workers: int | None) -> None:
        self.address = address
        self.workers = workers

    def run(self, run_point: RunPoint, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not jobs:
            return
        ray = import_ray()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started_here = not ray.is_initialized()
        pending: dict[Any, int] = {}
        try:
            if started_here:
                self._init(ray)
            task = ray.remote(num_cpus=1, max_retries=0)(run_point)
            for index, job in jobs:
                pending[task.remote(job)] = index
            while pending:
                done, _ = _signal_safe(ray.wait, list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        row = _signal_safe(ray.get, ref)
                    except Exception as exc:  # the task's worker died
                        row = {"error": f"ray task failed: {_first_line(exc)}"}
                    yield index, row
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started_here and ray.is_initialized():
                ray.shutdown()

    def _init(self, ray: Any) -> None:
        try:
            if self.address == "local":
                _signal_safe(
                    ray.init,
                    num_cpus=self.workers or default_jobs(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            else:
                _signal_safe(ray.init, address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:
            raise PipesimError(f"--ray {self.address}: cannot start or reach Ray ({_first_line(exc)})") from None


def _signal_safe(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Ray's compiled wait/get run Python signal handlers inside; a BaseException they raise (pipesim's
    Interrupted on Ctrl-C) comes out as a SystemError caused by it. Re-raise the interruption itself."""
    try:
        return call(*args, **kwargs)
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BaseException) and not isinstance(cause, Exception):
            raise cause from None
        raise


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PipesimError(
            "--ray: Ray is not installed; pip install 'pipesim[ray]' (or 'ray>=2.9'), or drop --ray to use the "
            "local process pool"
        ) from None
    return ray


def make_executor(jobs: int | None, ray_address: str | None) -> SerialExecutor | LocalPoolExecutor | RayExecutor:
    if jobs is not None and jobs < 1:
        raise PipesimError(f"--jobs {jobs}: give at least 1 worker")
    if ray_address is not None:
        if not ray_address.strip():
            raise PipesimError("--ray: give a Ray address (auto, ray://host:10001) or local")
        return RayExecutor(ray_address, jobs)
    workers = jobs if jobs is not None else default_jobs()
    return SerialExecutor() if workers == 1 else LocalPoolExecutor(workers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
