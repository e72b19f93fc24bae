"""The parts of a multi-host Redis URL (``scheme://[user:password@]host:port,host:port/...``) both topologies share."""

from __future__ import annotations

from urllib.parse import unquote


def credentials(userinfo: str) -> tuple[str | None, str | None]:
    """``user:password`` of a URL's netloc (either part may be empty or absent), percent-decoded."""
    if not userinfo:
        return None, None
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None


def host_addresses(hosts: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host``, ``host:port`` or ``[v6]:port`` items, comma-separated; ``what`` names them in errors."""
    return tuple(_address(item, default_port, what) for item in hosts.split(","))


def _address(item: str, default_port: int, what: str) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed {what} address {item!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"{what} address {item!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{what} address {item!r} has no valid port")
    return host, int(port_text)
