"""Who holds the other end of a local TCP connection: the uid behind the daemon's port.

When the daemon is down, any local user may listen on its port and wait for our CLI to
hand it the API token. Linux lists every TCP socket of this network namespace in
/proc/net/tcp and /proc/net/tcp6 with its owner's uid; the server side of a connection
(accepted or still in the accept queue) carries the uid of the listener that took it.
So, connected but before sending a byte, the CLI looks its own connection up there.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def server_uid(sock: socket.socket, attempts: int = 20) -> int | None:
    """The uid owning the server side of ``sock``'s connection; None when /proc cannot
    tell (unreadable, or not a local socket: a daemon on another host)."""
    ours, theirs = _address(sock.getsockname()), _address(sock.getpeername())
    for attempt in range(attempts):
        # On loopback the server's side exists by the time connect() returns, unless the
        # kernel deferred the handshake's last step: a short, bounded wait covers that.
        if attempt:
            time.sleep(0.05)
        try:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table, encoding="ascii") as lines:
                    for line in list(lines)[1:]:
                        fields = line.split()
                        if (_parse(fields[1]), _parse(fields[2])) == (theirs, ours):
                            return int(fields[7])
        except (OSError, ValueError, IndexError):
            return None
        if not theirs[0].is_loopback:
            return None
    return None


def _parse(field: str) -> Address:
    """``0100007F:2505``: each 32-bit word of the address printed in host byte order."""
    host, port = field.split(":")
    raw = b"".join(struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    return _normal(ipaddress.ip_address(raw)), int(port, 16)


def _address(name: tuple[str, int] | tuple[str, int, int, int]) -> Address:
    return _normal(ipaddress.ip_address(name[0])), name[1]


def _normal(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A dual-stack listener shows an IPv4 peer as ``::ffff:127.0.0.1``: compare as IPv4."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip
