"""A real Redis Cluster for the tests: six ``redis-server`` processes on loopback ports (three
primaries, three replicas), made a cluster with ``redis-cli --cluster create``.

``MULTISTEP_TEST_CLUSTER_PORT`` (default 7100) is the first port: the session's cluster is on
base..base+5, the failover test's own on base+10..base+15. ``python tests/cluster_service.py
[port]`` starts one by hand (stopped with Ctrl-C).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_PORT = int(os.environ.get("MULTISTEP_TEST_CLUSTER_PORT", "7100"))
NODES = 6
NODE_TIMEOUT_MS = 1500


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started here (the message says why)."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds (TIME_WAIT is no use)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    """Six redis-server processes forming one cluster; :meth:`stop` kills them all."""

    base: int
    dir: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return [self.base + i for i in range(NODES)]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node (a client needs one that answers)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_node(self, port: int) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.procs[port] = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / f"redis-{port}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
        return out.stdout

    def info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict ({} if it does not answer)."""
        try:
            text = self.cli(port, "cluster", "info", timeout=3.0)
        except subprocess.TimeoutExpired:
            return {}
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def wait_ok(self, ports: list[int] | None = None, timeout: float = 60.0) -> None:
        """Until every named node (default: all that run) says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            want = ports if ports is not None else [p for p, pr in self.procs.items() if pr.poll() is None]
            states = {p: self.info(p).get("cluster_state", "?").strip() for p in want}
            if all(s == "ok" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the cluster did not reach cluster_state:ok: {states}")
            time.sleep(0.1)

    def master_of_slot(self, slot: int) -> int:
        """The port of the primary serving ``slot`` (as a running node sees it)."""
        import redis

        for p, pr in self.procs.items():
            if pr.poll() is not None:
                continue
            try:
                r = redis.Redis(port=p, socket_timeout=3)
                for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
            except redis.exceptions.RedisError:
                continue
            finally:
                r.close()
        raise ClusterUnavailable(f"no running node knows who serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, nothing flushed)."""
        pr = self.procs[port]
        pr.send_signal(signal.SIGKILL)
        pr.wait(timeout=10)

    def stop(self) -> None:
        for pr in self.procs.values():
            if pr.poll() is None:
                pr.kill()
        for pr in self.procs.values():
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(base: int = BASE_PORT) -> LocalCluster:
    """Start six nodes on base..base+5 and join them (3 primaries, 1 replica each); raise
    :class:`ClusterUnavailable` saying why when that cannot be done here."""
    for exe in ("redis-server", "redis-cli"):
        if shutil.which(exe) is None:
            raise ClusterUnavailable(f"{exe} is not installed (a Redis of 7.0 or later provides it)")
    busy = [p for p in range(base, base + NODES) if not _port_free(p) or not _port_free(p + 10000)]
    if busy:
        raise ClusterUnavailable(
            f"ports {busy} (or their cluster bus ports +10000) are in use; set MULTISTEP_TEST_CLUSTER_PORT to a free base"
        )
    c = LocalCluster(base, Path(tempfile.mkdtemp(prefix=f"ms-cluster-{base}-")))
    try:
        for p in c.ports:
            c.start_node(p)
        deadline = time.monotonic() + 20
        while not all("PONG" in c.cli(p, "ping") for p in c.ports):
            if time.monotonic() > deadline or any(pr.poll() is not None for pr in c.procs.values()):
                raise ClusterUnavailable(f"the redis-server nodes did not start (logs in {c.dir})")
            time.sleep(0.05)
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in c.ports), "--cluster-replicas", "1",
             "--cluster-yes"], capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed: {(out.stderr or out.stdout)[-500:]}")
        c.wait_ok(c.ports)
        wait_replicas_synced(c)
    except BaseException:
        c.stop()
        raise
    return c


def wait_replicas_synced(c: LocalCluster, timeout: float = 30.0) -> None:
    """Until every primary has one replica online (so that a write can be replicated)."""
    import redis

    deadline = time.monotonic() + timeout
    while True:
        masters = 0
        synced = 0
        for p in c.ports:
            r = redis.Redis(port=p, socket_timeout=3)
            try:
                info = r.info("replication")
            finally:
                r.close()
            if info.get("role") == "master":
                masters += 1
                if info.get("connected_slaves", 0) >= 1 and "online" in str(info.get("slave0", "")):
                    synced += 1
        if masters == 3 and synced == 3:
            return
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"replicas not in sync after {timeout}s ({synced}/{masters} primaries)")
        time.sleep(0.1)


if __name__ == "__main__":  # pragma: no cover - by hand
    import sys

    cl = start_cluster(int(sys.argv[1]) if len(sys.argv) > 1 else BASE_PORT)
    print(cl.url, flush=True)
    try:
        signal.pause()
    finally:
        cl.stop()
