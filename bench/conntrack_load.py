"""Fill attachments' conntrack zones from the uplink (run inside its namespace).

``python conntrack_load.py IFACE PER_GUEST MAC...`` sends, for each guest MAC,
PER_GUEST TCP SYNs from 203.0.113.1 (distinct source ports) to the guest
address on port 1025, which every bench policy's first ingress rule allows:
each is committed to that guest's zone as a new connection. The guests have
no addresses, so nothing answers and the entries stay (SYN_SENT) for the
measurement. Prints how many frames it sent.

The frames are built by hand (Ethernet, IPv4, TCP with checksums) because
the bench sends a hundred thousand of them and needs no other packet
library; only the source port changes from one frame to the next.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

SOURCE = "203.0.113.1"
GUEST = "198.51.100.10"
GUEST_PORT = 1025
FIRST_SOURCE_PORT = 20000
UPLINK_MAC = bytes.fromhex("02bf00ffff01")
PACE_EVERY = 64  # frames between short pauses, so the switch's queues keep up


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(guest_mac: bytes, source_port: int) -> bytes:
    src, dst = socket.inet_aton(SOURCE), socket.inet_aton(GUEST)
    tcp = struct.pack("!HHIIBBHHH", source_port, GUEST_PORT, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return guest_mac + UPLINK_MAC + b"\x08\x00" + ip + tcp


def main(argv: list[str]) -> int:
    iface, per_guest, macs = argv[0], int(argv[1]), [bytes.fromhex(m.replace(":", "")) for m in argv[2:]]
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for mac in macs:
            for i in range(per_guest):
                s.send(syn_frame(mac, FIRST_SOURCE_PORT + i))
                sent += 1
                if sent % PACE_EVERY == 0:
                    time.sleep(0.003)
    print(sent, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
