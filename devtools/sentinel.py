"""A private Sentinel set of embedded valkey-server processes on free ports: a master, its replicas and three sentinels.

Data nodes keep their ports for life; ``data_nodes[0]`` starts as the master. Every helper returns once the sentinels
agree on the master, it accepts writes and every live replica follows it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import redis

from devtools._server_process import ServerProcess, distinct_free_ports, wait_until

DATA_ARGUMENTS = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


class PrivateSentinelSet:
    """One master, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2) monitoring ``service_name``."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        service_name: str = "cpws-primary",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        if replicas < 1 or sentinels < 2:
            raise ValueError("a sentinel set needs a replica to fail over to and at least two sentinels for quorum 2")
        self.service_name = service_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._root = Path(tempfile.mkdtemp(prefix="cpws-sentinel-"))
        ports = distinct_free_ports(1 + replicas + sentinels)
        self.data_nodes = [
            ServerProcess(port, self._root / f"data-{index}", DATA_ARGUMENTS)
            for index, port in enumerate(ports[:-sentinels])
        ]
        self.sentinels = [
            ServerProcess(
                port, self._root / f"sentinel-{index}", [str(self._root / f"sentinel-{index}" / "sentinel.conf")]
            )
            for index, port in enumerate(ports[-sentinels:])
        ]
        self._master = 0
        self._killed = 0
        self._partitioned: int | None = None

    # -- addresses ------------------------------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """The set as one ``redis+sentinel://`` URL: every sentinel, the service name and database 0."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    @property
    def master_index(self) -> int:
        """Index in ``data_nodes`` of the master the sentinels agreed on last."""
        return self._master

    # -- starting and stopping ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the master, its replicas (wait until they are in sync), then the sentinels (wait until they agree)."""
        try:
            master = self.data_nodes[0]
            master.start()
            for replica in self.data_nodes[1:]:
                replica.start(["--replicaof", "127.0.0.1", str(master.port)])
            for sentinel in self.sentinels:
                sentinel.directory.mkdir(parents=True, exist_ok=True)
                (sentinel.directory / "sentinel.conf").write_text(self._sentinel_config(master.port))
                sentinel.start(["--sentinel"])
            self.wait_settled(timeout)
        except BaseException:
            self.close()
            raise

    def _sentinel_config(self, master_port: int) -> str:
        name = self.service_name
        return (
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} {len(self.data_nodes)}\n"
        )

    def stop(self) -> None:
        """Stop every process by its pid, sentinels first so that none reacts to the data nodes going away."""
        for process in [*self.sentinels, *self.data_nodes]:
            process.stop()

    def close(self) -> None:
        """Stop every process and remove every process's files."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PrivateSentinelSet:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    # -- observing ------------------------------------------------------------------------------------------------

    def master_address(self, sentinel: int = 0) -> tuple[str, int]:
        """The master's address as sentinel ``sentinel`` reports it."""
        reply = self.sentinels[sentinel].strings("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return reply[0], int(reply[1])

    def _index_of_port(self, port: int) -> int:
        return next(index for index, node in enumerate(self.data_nodes) if node.port == port)

    def settled(self) -> bool:
        """Whether every live sentinel names one live writable master that every live replica follows, and sees that
        master up, every live replica reachable and every other live sentinel."""
        live_sentinels = [sentinel for sentinel in self.sentinels if sentinel.alive]
        ports = {self.master_address(index)[1] for index, sentinel in enumerate(self.sentinels) if sentinel.alive}
        if len(ports) != 1:
            return False
        master_index = self._index_of_port(ports.pop())
        master = self.data_nodes[master_index]
        if not master.alive or master.info("replication").get("role") != "master":
            return False
        live_replicas = [node for node in self.data_nodes if node.alive and node is not master]
        for replica in live_replicas:
            state = replica.info("replication")
            if state.get("master_port") != master.port or state.get("master_link_status") != "up":
                return False
        for sentinel in live_sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(self.service_name)
                # Reachability only: sentinels refresh a replica's replication details every 10 s, too slow to await.
                healthy = {
                    entry["port"]
                    for entry in client.sentinel_slaves(self.service_name)
                    if not entry["is_sdown"] and not entry["is_disconnected"]
                }
            if state["is_sdown"] or state["is_odown"] or state.get("num-other-sentinels") != len(live_sentinels) - 1:
                return False
            if not {replica.port for replica in live_replicas} <= healthy:
                return False
        self._master = master_index
        return True

    def wait_settled(self, timeout: float = 60.0) -> None:
        wait_until(self.settled, timeout, "the sentinels agree on a writable master that every replica follows")

    # -- faults ---------------------------------------------------------------------------------------------------

    def kill_master(self, timeout: float = 60.0) -> int:
        """SIGKILL the master and wait until the sentinels have promoted a replica; returns the killed node's index."""
        victim = self._master
        self.data_nodes[victim].kill()
        self._killed = victim
        wait_until(lambda: self.settled() and self._master != victim, timeout, "the sentinels fail over")
        return victim

    def restart_old_master_empty(self, node: int | None = None, timeout: float = 60.0) -> None:
        """Start data node ``node`` (by default the master killed last) again on its port, as a master with no data,
        and wait until the sentinels have turned it into a replica of the current master."""
        node = self._killed if node is None else node
        self.data_nodes[node].stop()
        shutil.rmtree(self.data_nodes[node].directory, ignore_errors=True)
        self.data_nodes[node].start()
        wait_until(
            lambda: self.settled() and self._master != node and self.data_nodes[node].alive,
            timeout,
            f"the sentinels make data node {node} a replica",
        )

    def partition_master(self, timeout: float = 60.0) -> int:
        """Make the master refuse the sentinels' PING (an ACL rule) until they have promoted a replica, while it goes
        on taking every client's writes: a split brain. Returns the partitioned node's index (``heal`` ends it)."""
        victim = self._master
        self.data_nodes[victim].command("ACL", "SETUSER", "default", "-ping")
        self._partitioned = victim
        wait_until(lambda: self._promoted_other_than(victim), timeout, "the sentinels promote a replica")
        return victim

    def _promoted_other_than(self, node: int) -> bool:
        """Whether every live sentinel names one master, not ``node``, that is up (its other replica may lag)."""
        ports = {self.master_address(index)[1] for index, sentinel in enumerate(self.sentinels) if sentinel.alive}
        if len(ports) != 1:
            return False
        master = self._index_of_port(ports.pop())
        if master == node or self.data_nodes[master].info("replication").get("role") != "master":
            return False
        self._master = master
        return True

    def heal(self, timeout: float = 60.0) -> None:
        """Start every stopped process again (data nodes as replicas of the current master), let a partitioned master
        answer the sentinels again, and wait until settled."""
        if self._partitioned is not None:
            self.data_nodes[self._partitioned].command("ACL", "SETUSER", "default", "+ping")
            self._partitioned = None
        for sentinel in self.sentinels:
            if not sentinel.alive:
                sentinel.start(["--sentinel"])
        master = self.data_nodes[self._master]
        for node in self.data_nodes:
            if not node.alive:
                node.start(["--replicaof", "127.0.0.1", str(master.port)])
        self.wait_settled(timeout)

    def master_client(self) -> redis.Redis:
        """A plain client of the current master (as last settled); the caller closes it."""
        return self.data_nodes[self._master].client()
