"""Links of another network namespace, read and set up without a process.

A socket stays in the network namespace it was made in. One made by a
short-lived thread that entered the namespace (``setns`` moves only the
calling thread) answers ``SIOCGIFFLAGS`` (and takes ``SIOCSIFHWADDR``,
``SIOCSIFFLAGS``) for that namespace's links from any thread afterwards:
whether a link exists and is up, giving it an address, or setting it up
or down, costs an ioctl, not an ``ip`` process (a fork+exec, tens of milliseconds on a busy machine).
The thread ends right after, so no thread of the daemon is left in
another namespace. iproute2 and pyroute2 offer no such query without a
child process, hence these few lines by hand.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path

from coordinator.eswitch.base import EswitchError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1
_IFREQ = struct.Struct("16sH")  # ifr_name, ifr_flags (the rest of struct ifreq unused)
_IFREQ_HWADDR = struct.Struct("16sH14s")  # ifr_name, ifr_hwaddr (sa_family, sa_data)
_IFREQ_SIZE = 40


class NetnsLinks:
    """Flags of the links of namespace ``netns`` ("" = the daemon's own).
    The socket is made again when the namespace was re-created."""

    def __init__(self, netns: str) -> None:
        self._netns = netns
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._inode = 0

    def flags(self, ifname: str) -> int | None:
        """The link's flags (``IFF_*``), None if it does not exist."""
        request = _IFREQ.pack(ifname.encode(), 0).ljust(_IFREQ_SIZE, b"\0")
        try:
            answer = fcntl.ioctl(self._socket().fileno(), SIOCGIFFLAGS, request)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return int(_IFREQ.unpack(answer[: _IFREQ.size])[1])

    def is_up(self, ifname: str) -> bool:
        flags = self.flags(ifname)
        return flags is not None and bool(flags & IFF_UP)

    def set_address_and_up(self, ifname: str, mac: str) -> None:
        """Give the link MAC address ``mac`` and set it up (what
        ``ip link set dev IFNAME address MAC up`` does). Raises OSError."""
        address = bytes.fromhex(mac.replace(":", ""))
        if len(address) != 6:
            raise ValueError(f"not a MAC address: {mac!r}")
        fd = self._socket().fileno()
        fcntl.ioctl(
            fd,
            SIOCSIFHWADDR,
            _IFREQ_HWADDR.pack(ifname.encode(), ARPHRD_ETHER, address).ljust(_IFREQ_SIZE, b"\0"),
        )
        if not self.set_up(ifname, True):
            raise OSError(errno.ENODEV, f"no link {ifname}")

    def set_up(self, ifname: str, up: bool) -> bool:
        """Set the link administratively up or down (what ``ip link set dev
        IFNAME up|down`` does); False if there is no such link. Raises OSError."""
        flags = self.flags(ifname)
        if flags is None:
            return False
        wanted = flags | IFF_UP if up else flags & ~IFF_UP
        if wanted != flags:
            request = _IFREQ.pack(ifname.encode(), wanted).ljust(_IFREQ_SIZE, b"\0")
            try:
                fcntl.ioctl(self._socket().fileno(), SIOCSIFFLAGS, request)
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return False
                raise
        return True

    def set_up_or_raise(self, ifname: str, up: bool) -> bool:
        """``set_up`` as a backend's ``set_representor_up``: a failure as
        EswitchError naming the representor."""
        try:
            return self.set_up(ifname, up)
        except OSError as exc:
            raise EswitchError(f"representor {ifname}: setting it {'up' if up else 'down'}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _socket(self) -> socket.socket:
        inode = os.stat(NETNS_DIR / self._netns).st_ino if self._netns else 0
        with self._lock:
            if self._sock is None or inode != self._inode:
                if self._sock is not None:
                    self._sock.close()
                self._sock = _socket_in(self._netns) if self._netns else _datagram_socket()
                self._inode = inode
            return self._sock


def _datagram_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _socket_in(netns: str) -> socket.socket:
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            target = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failed.append(exc)
            return
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                failed.append(OSError(code, f"setns into {netns}: {os.strerror(code)}"))
                return
            made.append(_datagram_socket())
        finally:
            os.close(target)
        # No way back needed: this thread ends here, and with it its place
        # in the namespace.

    thread = threading.Thread(target=enter_and_make, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    if not made:  # pragma: no cover - the thread either made one or said why not
        raise OSError(f"no socket made in network namespace {netns}")
    return made[0]
