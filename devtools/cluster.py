"""A private Redis Cluster of embedded valkey-server nodes on free ports, formed by plain commands, with fault helpers.

Shard ``i`` is the group of nodes that starts as primary ``i`` (node ``i``) and its replicas; replica migration is off,
so a shard keeps its members through failovers and restarts and only its primary changes. Every helper returns once
the cluster has settled: every live node says ``cluster_state:ok`` and agrees on who serves which slots.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from redis.cluster import ClusterNode
from redis.crc import key_slot

from devtools._server_process import ServerProcess, distinct_free_ports, wait_until

SLOTS = 16384


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as a node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: frozenset[int]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> dict[int, NodeView]:
    """``CLUSTER NODES`` output keyed by port; slots being imported or migrated (``[...]``) are left out."""
    views: dict[int, NodeView] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1] or 0)
        slots: set[int] = set()
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        flags = frozenset(fields[2].split(","))
        primary_id = None if fields[3] == "-" else fields[3]
        views[port] = NodeView(fields[0], port, flags - {"myself"}, primary_id, frozenset(slots))
    return views


class PrivateCluster:
    """``primaries`` shards of a primary and ``replicas`` replicas each, started, broken and stopped by their owner."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
        full_coverage: bool = True,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and a non-negative number of replicas")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self._root = Path(tempfile.mkdtemp(prefix="cpws-cluster-"))
        count = primaries * (1 + replicas)
        ports = distinct_free_ports(2 * count)
        arguments = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica may always stand in for its primary, however long it has been cut off; shards stay fixed.
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--repl-diskless-sync-delay", "0",
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            # "no": the other shards keep serving while a shard has no live primary.
            "--cluster-require-full-coverage", "yes" if full_coverage else "no",
        ]  # fmt: skip
        self.nodes = [
            ServerProcess(ports[i], self._root / f"node-{i}", [*arguments, "--cluster-port", str(ports[count + i])])
            for i in range(count)
        ]
        self._bus_ports = ports[count:]
        self._ids: dict[int, str] = {}

    # -- addresses ------------------------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node as one ``redis+cluster://`` URL (a client may start from any of them)."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.addresses)

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(host, port) for host, port in self.addresses]  # type: ignore[no-untyped-call]

    def shard_members(self, shard: int) -> list[int]:
        """Node indexes of shard ``shard``: its first primary, then its replicas."""
        first = self.primaries + shard * self.replicas
        return [shard, *range(first, first + self.replicas)]

    def shard_of(self, node: int) -> int:
        return node if node < self.primaries else (node - self.primaries) // self.replicas

    # -- forming and stopping -------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, assign slots evenly, join the nodes, attach replicas and wait until the cluster is ok."""
        try:
            for node in self.nodes:
                node.start()
            for index, node in enumerate(self.nodes):
                self._ids[index] = str(node.command("CLUSTER", "MYID"))
                node.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            for shard in range(self.primaries):
                first, last = shard * SLOTS // self.primaries, (shard + 1) * SLOTS // self.primaries - 1
                self.nodes[shard].command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for index in range(1, len(self.nodes)):
                self.nodes[0].command("CLUSTER", "MEET", "127.0.0.1", self.nodes[index].port, self._bus_ports[index])
            wait_until(self._all_known, timeout, "every node knows every other node")
            for replica in range(self.primaries, len(self.nodes)):
                self.nodes[replica].command("CLUSTER", "REPLICATE", self._ids[self.shard_of(replica)])
            self.wait_settled(timeout)
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        """Stop every node by its pid."""
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node and remove every node's files."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    # -- observing ------------------------------------------------------------------------------------------------

    def view(self, node: int) -> dict[int, NodeView]:
        """The cluster as node ``node`` sees it, keyed by port."""
        return parse_cluster_nodes(str(self.nodes[node].command("CLUSTER", "NODES")))

    def live(self) -> list[int]:
        return [index for index, node in enumerate(self.nodes) if node.alive]

    def primary_of(self, shard: int) -> int:
        """Node index of the shard's current primary (as the first live node of the shard sees it)."""
        members = [index for index in self.shard_members(shard) if self.nodes[index].alive]
        view = self.view(members[0])
        for index in members:
            entry = view.get(self.nodes[index].port)
            if entry is not None and entry.is_primary and not entry.failing:
                return index
        raise LookupError(f"shard {shard} has no live primary")

    def replicas_of(self, shard: int) -> list[int]:
        """Node indexes of the shard's live members other than its current primary."""
        primary = self.primary_of(shard)
        return [index for index in self.shard_members(shard) if index != primary and self.nodes[index].alive]

    def primary_for_key(self, key: str | bytes) -> int:
        """Node index of the primary that serves ``key``'s slot now."""
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def primary_for_slot(self, slot: int) -> int:
        ports = {node.port: index for index, node in enumerate(self.nodes)}
        for port, entry in self.view(self.live()[0]).items():
            if slot in entry.slots and entry.is_primary and not entry.failing:
                return ports[port]
        raise LookupError(f"no live primary serves slot {slot}")

    def _all_known(self) -> bool:
        expected = {node.port for node in self.nodes}
        for index in range(len(self.nodes)):
            view = self.view(index)
            if set(view) != expected or any("handshake" in entry.flags for entry in view.values()):
                return False
        return True

    def settled(self) -> bool:
        """Whether every live node is ok, sees every live node healthy, and all agree on each shard's primary."""
        live = self.live()
        live_ports = {self.nodes[index].port for index in live}
        views = []
        for index in live:
            info = str(self.nodes[index].command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
            view = self.view(index)
            if any(view[port].failing for port in live_ports if port in view) or not live_ports <= set(view):
                return False
            views.append(view)
        for shard in range(self.primaries):
            members = [index for index in self.shard_members(shard) if index in live]
            ports = [self.nodes[index].port for index in members]
            primaries = {port for port in ports if views[0][port].is_primary}
            if len(primaries) != 1:
                return False
            primary_id = views[0][primaries.pop()].node_id
            for view in views:
                for port in ports:
                    entry = view[port]
                    if entry.node_id != primary_id and entry.primary_id != primary_id:
                        return False
            for index in members:
                if self.nodes[index].port in primaries or views[0][self.nodes[index].port].node_id == primary_id:
                    continue
                if self.nodes[index].info("replication").get("master_link_status") != "up":
                    return False
        return all(view_slots(view) == view_slots(views[0]) for view in views)

    def wait_settled(self, timeout: float = 60.0) -> None:
        wait_until(self.settled, timeout, "the cluster is ok and every node agrees on its shape")

    # -- faults ---------------------------------------------------------------------------------------------------

    def kill_primary(self, shard: int, timeout: float = 60.0) -> int:
        """SIGKILL the shard's primary and wait until a replica has taken over; returns the killed node's index."""
        if not self.replicas_of(shard):
            raise RuntimeError(f"shard {shard} has no live replica to take over")
        victim = self.primary_of(shard)
        self.nodes[victim].kill()
        wait_until(lambda: self.settled() and self.primary_of(shard) != victim, timeout, f"shard {shard} fails over")
        return victim

    def failover(self, replica: int, timeout: float = 60.0) -> None:
        """Promote node ``replica`` by ``CLUSTER FAILOVER`` (its primary agrees) and wait until the cluster settles."""
        shard = self.shard_of(replica)
        if self.primary_of(shard) == replica:
            raise ValueError(f"node {replica} is already its shard's primary")
        self.nodes[replica].command("CLUSTER", "FAILOVER")
        wait_until(lambda: self.settled() and self.primary_of(shard) == replica, timeout, f"node {replica} takes over")

    def restart_node(self, node: int, timeout: float = 60.0) -> None:
        """Start node ``node`` again on its port with its nodes.conf (stopping it first if it runs) and wait until it
        has rejoined: a former primary comes back as a replica of its shard's new primary."""
        self.nodes[node].stop()
        self.nodes[node].start()
        self.wait_settled(timeout)

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every node that is down and wait until the cluster settles."""
        for node in self.nodes:
            if not node.alive:
                node.start()
        self.wait_settled(timeout)

    def migrate_slot(
        self,
        slot: int,
        to_shard: int,
        batch: int = 100,
        on_batch: Callable[[list[str]], None] | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Move ``slot`` and its keys to ``to_shard``'s primary the classic way: IMPORTING on the target, MIGRATING on
        the source, MIGRATE the keys in batches, then SETSLOT NODE everywhere (target first).

        ``on_batch(moved_keys)`` runs after each batch, while the slot is half migrated (clients get ASK redirects).
        """
        source, target = self.primary_for_slot(slot), self.primary_of(to_shard)
        if source == target:
            return
        source_node, target_node = self.nodes[source], self.nodes[target]
        target_node.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self._ids[source])
        source_node.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self._ids[target])
        while keys := source_node.strings("CLUSTER", "GETKEYSINSLOT", slot, batch):
            source_node.command("MIGRATE", "127.0.0.1", target_node.port, "", 0, 5000, "KEYS", *keys)
            if on_batch is not None:
                on_batch(keys)
        target_node.command("CLUSTER", "SETSLOT", slot, "NODE", self._ids[target])
        source_node.command("CLUSTER", "SETSLOT", slot, "NODE", self._ids[target])
        for shard in range(self.primaries):
            other = self.primary_of(shard)
            if other not in (source, target):
                self.nodes[other].command("CLUSTER", "SETSLOT", slot, "NODE", self._ids[target])
        wait_until(lambda: self.settled() and self.primary_for_slot(slot) == target, timeout, f"slot {slot} has moved")


def view_slots(view: dict[int, NodeView]) -> dict[int, frozenset[int]]:
    """Slots per live primary port in one node's view."""
    return {port: entry.slots for port, entry in view.items() if entry.is_primary and not entry.failing}
