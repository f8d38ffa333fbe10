"""Persona networking: a veth pair to bay0 and an nftables egress allowlist, default deny.

``network: none`` needs nothing here (the launcher brings ``lo`` up in the persona's
own netns). An explicit policy (``bay0.formats.inventory.Network``) gets:

- host side: ``sp-<name>`` with the gateway address, peer ``eth0`` moved into the
  persona's netns by pid (``ip link add ... peer name eth0 netns PID``);
- inside (run by the persona's PID 1 before it pivots, while it still sees the host's
  ``ip``): the persona's address, ``eth0`` up, default route via the gateway;
- one nftables table ``inet bay0_<name>``: from the persona only established
  traffic and the declared (dest, proto, port) flows pass, to bay0 itself and
  onwards; nothing new reaches the persona from outside.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from bay0.sys.proc import run

PEER = "eth0"


def host_ifname(name: str) -> str:
    """The host-side interface of persona ``name`` (IFNAMSIZ: at most 15 characters).

    Long names keep a prefix plus a digest, so two personas never share an interface.
    """
    if len(name) <= 12:
        return f"sp-{name}"
    return f"sp-{name[:7]}-{hashlib.sha256(name.encode()).hexdigest()[:4]}"


def table_name(name: str) -> str:
    return "bay0_" + name.replace("-", "_")


def gateway_of(network: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The host side's address: the declared gateway, else the other host of the network."""
    iface = ipaddress.ip_interface(network.address)
    if network.gateway:
        gw = ipaddress.ip_address(network.gateway)
    else:
        gw = next(h for h in iface.network.hosts() if h != iface.ip)
    return ipaddress.ip_interface(f"{gw}/{iface.network.prefixlen}")


def setup_host_side(name: str, pid: int, network: Any) -> None:
    """Create the veth pair (peer into ``pid``'s netns), address and nft policy; raises ``ToolError``."""
    host = host_ifname(name)
    run(["ip", "link", "add", host, "type", "veth", "peer", "name", PEER, "netns", str(pid)])
    try:
        run(["ip", "addr", "add", str(gateway_of(network)), "dev", host])
        run(["ip", "link", "set", host, "up"])
        run(["nft", "-f", "-"], input=ruleset(name, network).encode())
    except BaseException:
        teardown(name)
        raise


def configure_inside(network: Any) -> None:
    """Inside the persona's netns: address, link up, default route; raises ``ToolError``."""
    run(["ip", "addr", "add", network.address, "dev", PEER])
    run(["ip", "link", "set", PEER, "up"])
    run(["ip", "route", "add", "default", "via", str(gateway_of(network).ip), "dev", PEER])


def ruleset(name: str, network: Any) -> str:
    """The nft script for persona ``name``: default deny, the egress rules allowed."""
    host = host_ifname(name)
    family = "ip" if ipaddress.ip_interface(network.address).version == 4 else "ip6"
    allow = [
        f'iifname "{host}" {family} daddr {rule.dest} {rule.proto} dport {rule.port} accept'
        for rule in network.egress
    ]
    body = "\n".join(
        [f'iifname "{host}" ct state established,related accept', *allow, f'iifname "{host}" drop']
    )
    inbound = f'oifname "{host}" ct state established,related accept\n oifname "{host}" drop'
    table = table_name(name)
    return (
        f"table inet {table} {{}}\ndelete table inet {table}\n"
        f"table inet {table} {{\n"
        f" chain input {{ type filter hook input priority -10; policy accept;\n {body}\n }}\n"
        f" chain forward {{ type filter hook forward priority -10; policy accept;\n {body}\n {inbound}\n }}\n"
        f"}}\n"
    )


def teardown(name: str) -> None:
    """Remove the persona's nft table and host interface (both may already be gone)."""
    run(["nft", "delete", "table", "inet", table_name(name)], check=False)
    run(["ip", "link", "del", host_ifname(name)], check=False)
