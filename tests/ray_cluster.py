"""A real two-node Ray cluster on this machine, held by a child process, for tests that take a node away.

The child holds a ``ray.cluster_utils.Cluster``: a head node and one worker node, each with its
own raylet, object store and CPUs. It runs under a private ``RAY_TMPDIR``, so no other
``ray.init()`` on the machine finds it as "the current cluster", and the test process's own
Ray is left alone. Its nodes are started without the test's store settings (``AWS_*``,
``FSSPEC_*``), as cluster nodes that were never given credentials: a build reaches a store
from them only with what its driver sends along with its tasks. The child reads commands on
stdin: ``remove`` kills the worker node; end of input shuts the cluster down.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil


class TwoNodeCluster:
    def __init__(self, cpus_per_node: int = 1, timeout: float = 90):
        self.tmp = Path(tempfile.mkdtemp(prefix="elm-ray-", dir="/tmp"))  # short: Ray's socket paths live here
        self.log = self.tmp / "cluster.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        env.update(RAY_TMPDIR=str(self.tmp), RAY_USAGE_STATS_ENABLED="0")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, str(cpus_per_node)], env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            started = self._reply(timeout)
        except BaseException:
            self.close()
            raise
        self.address: str = started["address"]
        self.worker_raylet: int = started["worker_raylet"]

    def _reply(self, timeout: float) -> dict:
        try:
            return json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise TimeoutError(f"the Ray cluster did not answer within {timeout:.0f} s; its log ends:\n"
                               f"{self.log.read_text()[-3000:]}") from None

    def worker_node_processes(self) -> list[psutil.Process]:
        """The worker node's raylet and every process it started (its Ray workers among them)."""
        raylet = psutil.Process(self.worker_raylet)
        return [raylet, *raylet.children(recursive=True)]

    def worker_node_tasks(self, task_name: str) -> list[psutil.Process]:
        """The worker node's processes running a task of that name now (Ray titles them ``ray::<task>``)."""
        running = []
        for p in self.worker_node_processes():
            try:
                if (p.cmdline() or [""])[0].startswith(f"ray::{task_name}"):
                    running.append(p)
            except psutil.NoSuchProcess:
                pass
        return running

    def remove_worker_node(self, timeout: float = 60) -> None:
        """Kill every process of the worker node, as when a machine drops out of a cluster."""
        left = self.worker_node_processes()
        self.proc.stdin.write("remove\n")
        self.proc.stdin.flush()
        self._reply(timeout)
        for p in left:  # a Ray worker outlives its raylet only when it was stopped; none may linger
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()  # Ray's reaper then ends the nodes it started
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "TwoNodeCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(cpus_per_node: int) -> None:
    # Nodes started this way find Ray's token but do not make one (a first ray.init does): make it if missing.
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], check=True,
                   stdout=subprocess.DEVNULL)
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    raylet = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    print(json.dumps({"address": cluster.address, "worker_raylet": raylet}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "remove" and worker is not None:
                cluster.remove_node(worker, allow_graceful=False)
                worker = None
                print(json.dumps({"removed": True}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
