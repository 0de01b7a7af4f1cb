"""Network namespaces on one machine: a bridge in the root namespace and, per member, a
namespace joined to it by a veth pair, so a process can be cut off the network without
touching the others (deploy/local/cluster.py builds its topology on this).

    root namespace: bridge cs<tag>br, 10.213.<n>.1/24, forwarding off
        │ veth cs<tag><member>  <->  eth0 in namespace cs<tag>-<member>, 10.213.<n>.<octet>/24

Two ways to break the network, both silent (packets vanish, as in a real partition: no
error reaches the sender, connections time out):

- `isolate(member)` takes the member's link down: nothing in or out;
- `cut(member, addresses)` routes the member's packets for those addresses through the root
  namespace, which does not forward them (forwarding is off on the bridge): the member loses
  those peers and keeps every other (say ingest loses Kafka and keeps Mosquitto).

`heal` / `rejoin` undo them. Namespaces are named after the creating process's pid (`<tag>`);
`remove_leftovers` deletes those of processes that are gone (a crashed test run), killing
what still runs inside them. Needs root (``ip netns``, ``ip link``); no tc or netfilter.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.supervision import Progress, run, say
from models.errors import StackError

PREFIX = "cs"
SUBNET = "10.213"  # /16 from which each network takes a /24 (first free third octet)
_OWNED = re.compile(rf"^{PREFIX}(\d+)(?:-|br$)")


def _ip(*args: str) -> str:
    return run(["ip", *args], f"ip {' '.join(args)}")


def _owner_alive(name: str) -> bool:
    match = _OWNED.match(name)
    return match is None or Path(f"/proc/{match.group(1)}").exists()


def netns_names() -> list[str]:
    """Every network namespace on the machine (``ip netns list``)."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def pids_in(netns: str) -> list[int]:
    """The processes running in `netns`."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def delete_netns(netns: str) -> None:
    """SIGKILL whatever still runs in `netns` (by pid), then delete it."""
    for pid in pids_in(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def remove_leftovers(say: Progress = say) -> list[str]:
    """Delete the namespaces and bridges of networks whose creating process is gone; their
    names. Leaves everything of running processes (another test run) alone."""
    require_root()
    gone = [n for n in netns_names() if _OWNED.match(n) and not _owner_alive(n)]
    for netns in gone:
        delete_netns(netns)
    links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True,
                           text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if _OWNED.match(name) and not _owner_alive(name):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            gone.append(name)
    if gone:
        say(f"removed leftovers of an earlier run: {', '.join(gone)}")
    return gone


def require_root() -> None:
    if os.geteuid() != 0:
        raise StackError("network namespaces need root (ip netns, ip link): run as root")


def _free_subnet() -> int:
    used = _ip("-4", "-o", "addr", "show")
    for n in range(1, 255):
        if f" {SUBNET}.{n}." not in used:
            return n
    raise StackError(f"no free /24 left in {SUBNET}.0.0/16 for a test network")


@dataclass
class Network:
    """A bridge and one namespace per member (see module docstring). Build with `create`;
    `destroy` removes everything, also after a partial `create`."""

    tag: str
    subnet: int
    members: dict[str, int] = field(default_factory=dict)  # member -> last address octet
    cuts: dict[str, set[str]] = field(default_factory=dict)  # member -> addresses cut off

    @classmethod
    def create(cls, members: Mapping[str, int], say: Progress = say) -> Network:
        """Namespaces for `members` (name of at most 4 letters and digits -> last octet of
        its address, 2-254) on a new bridge; removes leftovers of crashed runs first."""
        require_root()
        remove_leftovers(say)
        for name, octet in members.items():
            if not re.fullmatch(r"[a-z0-9]{1,4}", name) or not 2 <= octet <= 254:
                raise ValueError(f"member {name!r} (.{octet}): want [a-z0-9]{{1,4}} and 2-254")
        net = cls(str(os.getpid()), _free_subnet())
        if net.bridge in _ip("-o", "link", "show"):
            raise StackError(f"{net.bridge} exists: this process already has a network")
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
            # packets routed to the root namespace are dropped, silently: how `cut` works
            Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/forwarding").write_text("0")
            _ip("link", "set", net.bridge, "up")
            for name, octet in members.items():
                net.add(name, octet)
        except BaseException:
            net.destroy()
            raise
        return net

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.tag}br"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace."""
        return f"{SUBNET}.{self.subnet}.1"

    def netns(self, member: str) -> str:
        return f"{PREFIX}{self.tag}-{member}"

    def address(self, member: str) -> str:
        return f"{SUBNET}.{self.subnet}.{self.members[member]}"

    def _veth(self, member: str) -> str:
        return f"{PREFIX}{self.tag}{member}"

    def add(self, member: str, octet: int) -> None:
        """A namespace for `member` at ``<subnet>.<octet>`` on the bridge, its loopback up."""
        ns, veth = self.netns(member), self._veth(member)
        self.members[member] = octet
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(member)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, member: str, addresses: Iterable[str]) -> None:
        """Cut `member` off `addresses` (both ways, silently), keeping its other peers."""
        for address in addresses:
            _ip("-n", self.netns(member), "route", "replace", f"{address}/32", "via",
                self.gateway, "dev", "eth0")
            self.cuts.setdefault(member, set()).add(address)

    def heal(self, member: str) -> None:
        """Undo every `cut` of `member`."""
        for address in sorted(self.cuts.pop(member, set())):
            _ip("-n", self.netns(member), "route", "del", f"{address}/32")

    def isolate(self, member: str) -> None:
        """Take `member`'s link down: nothing reaches it, nothing leaves it."""
        _ip("link", "set", self._veth(member), "down")

    def rejoin(self, member: str) -> None:
        _ip("link", "set", self._veth(member), "up")

    def destroy(self) -> None:
        """Kill what runs in the namespaces, delete them (their veths go with them) and the
        bridge. Never raises for what is already gone."""
        for member in list(self.members):
            delete_netns(self.netns(member))
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.members.clear()
        self.cuts.clear()
