"""Ray for the pipelines: start (or join) it once, turn a unit's work into a Ray task, and keep a bounded
number of unit tasks in flight.

The build and the live stream both run one task per work unit (``unit_task``). The build keeps at most N
in flight and takes results as they finish (``in_flight``); the live stream's feed starts them as its
readers ask (``pipelines.stream.UnitFeed``).
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any

# Ray's servers listen on every interface; with its token authentication off, any host that reaches the
# machine could join and run code as the user. Every Ray the project starts or joins uses a token.
AUTH_MODE = "token"


class RayAuthRefused(ValueError):
    """The environment asks for Ray without token authentication, which the project never runs."""


def require_token_auth() -> None:
    """Turn Ray's token authentication on for this process and those it starts; refuse a request to turn it off."""
    asked = os.environ.get("RAY_AUTH_MODE", AUTH_MODE)
    if asked.lower() != AUTH_MODE:
        raise RayAuthRefused(f"RAY_AUTH_MODE={asked}: elm-corpus runs Ray only with token authentication (without it "
                         "anyone who reaches this machine can run code on it); unset RAY_AUTH_MODE, and see "
                         "docs/scale.md for giving a cluster's nodes the token")
    os.environ["RAY_AUTH_MODE"] = AUTH_MODE


def start_ray(workers: int | None = None, address: str | None = None, ship_code: bool = True) -> bool:
    """Start (or join) Ray unless this process already has it; True when this call started it.

    ``address``: a cluster to join; the cluster then runs this very code (shipped as
    ``py_modules``), whatever its nodes have installed, unless ``ship_code`` is false (a process
    that only reads what others compute). Else a local Ray with ``workers`` CPUs.
    Either way with token authentication: a local Ray makes its token (``~/.ray/auth_token``) once; a
    cluster's token must already be here (docs/scale.md).
    """
    require_token_auth()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address and not ship_code:
        ray.init(address=address, **common)
    elif address:
        import corpus
        import pipelines
        ray.init(address=address, runtime_env={"py_modules": [corpus, pipelines]}, **common)
    else:
        stop_orphaned_ray_processes()
        # Ray starts workers at niceness 15; a job the user asked for should not yield to every other process
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **common)
    return True


def stop_orphaned_ray_processes() -> list[int]:
    """Stop this user's Ray processes whose raylet is gone; return their pids.

    A local Ray dies with the process that started it, but when that process is SIGKILLed, the agents its raylet
    started (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``: about 200 MB) outlive it by a minute, trying to
    tell the dead GCS before they exit (Ray waits 60 s there, not configurable). Every process Ray starts on a node
    is a child of that node's raylet, so one whose parent is no raylet is such a leftover, never a live Ray's.
    """
    import psutil
    me = os.getuid()
    orphans = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmdline, uids = proc.info["cmdline"], proc.info["uids"]
            if not cmdline or not cmdline[0].startswith("ray::") or uids is None or uids.real != me:
                continue
            parent = proc.parent()
            if parent is None or not any("raylet" in part for part in parent.cmdline()[:1]):
                orphans.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in orphans:
        with suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=5)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    return [proc.pid for proc in orphans]


def cluster_cpus() -> int:
    """CPUs of the Ray this process is connected to."""
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def unit_task(task: Callable, retries: int, env: dict[str, str] | None = None):
    """``task`` as a one-CPU Ray task that Ray reruns up to ``retries`` times when its worker process dies.

    An exception raised by the task itself is never retried: rereading the same input raises it again.
    ``env``: environment variables the task's workers start with (a cluster's nodes may lack the driver's).
    """
    import ray
    options = {"runtime_env": {"env_vars": env}} if env else {}
    return ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False, **options)(task)


def _first(refs):
    """The ref whose readiness stands for a task's: its only one, or the first of its list (all are ready together)."""
    return refs[0] if isinstance(refs, list) else refs


def in_flight(task: Callable, shared: Any, items: Iterable, argument: Callable[[Any], Any], limit: int,
              stop: Callable[[], bool] | None = None,
              env: dict[str, str] | None = None, retries: int = 3, returns: int = 1) -> Iterator[tuple[Any, Any]]:
    """Run ``task(shared, argument(item))`` as a one-CPU Ray task per item, at most ``limit`` at a time.

    Yields ``(item, object ref)`` once the ref is ready to ``ray.get`` (which raises if its task
    failed; the caller decides what a failure means), in the order items finish. ``shared`` is put in the
    object store once.
    Once ``stop()`` is true no new task starts, and the ones running are still yielded as they end.
    ``env``: environment variables the tasks run with (Ray starts their workers with them).
    ``retries``: how often Ray reruns a task whose worker process died (killed, out of memory, node lost);
    an exception raised by the task itself is never retried, since rereading the same input raises it again.
    ``returns``: with more than one, the task returns that many values, each its own object (a large one can stay
    in the object store for other tasks while a small one is read), and the yielded ref is a list of them.
    """
    import ray
    remote = unit_task(task, retries, env)
    if returns > 1:
        remote = remote.options(num_returns=returns)
    shared_ref = ray.put(shared)
    queue = deque(items)
    running: deque[tuple[Any, Any]] = deque()
    while running or (queue and not (stop and stop())):
        while queue and len(running) < limit and not (stop and stop()):
            item = queue.popleft()
            running.append((item, remote.remote(shared_ref, argument(item))))
        (ready,), _ = ray.wait([_first(r) for _, r in running], num_returns=1)
        item, ref = next((i, r) for i, r in running if _first(r) == ready)
        running.remove((item, ref))
        yield item, ref
