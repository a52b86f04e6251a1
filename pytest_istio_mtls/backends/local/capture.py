"""Packet capture on the pods' interfaces, in process, with an explicit drain after every probe.

An AF_PACKET socket opened in the hub namespace sees every frame crossing each pod's veth (what
tcpdump -i <veth> would see, through the same kernel interface libpcap uses). Draining it right
after a probe has its answer gives that probe's frames deterministically: no flush delay, no
"did tcpdump write it yet" race that could hide a plaintext marker.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from .system import netns_socket

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # Ethernet link type


class PacketCapture:
    """Frames per interface: every pod veth (from the hub) plus chosen pods' loopback.

    A pod calling its own Service never leaves the pod: its sidecar reaches its own IP over lo,
    exactly as on a real pod. Those connections are captured on that pod's lo; the analysis
    later keeps only the probe's exact flow, so the plaintext app-to-sidecar legs on lo never
    count as the wire.
    """

    def __init__(self, hub_netns: str) -> None:
        self._sockets: dict[str, socket.socket] = {}
        self._open("", hub_netns, None)

    def _open(self, key: str, netns: str, interface: str | None) -> None:
        sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        if interface is not None:
            sock.bind((interface, ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        sock.setblocking(False)
        self._sockets[key] = sock

    def add_loopback(self, netns: str) -> None:
        self._open(f"{netns}:lo", netns, "lo")

    def remove_loopbacks(self) -> None:
        for key in [k for k in self._sockets if k]:
            self._sockets.pop(key).close()

    def drain(self) -> dict[str, list[tuple[float, bytes]]]:
        """Every frame queued since the last drain, keyed by hub interface name or '<netns>:lo'."""
        frames: dict[str, list[tuple[float, bytes]]] = {}
        for key, sock in self._sockets.items():
            while True:
                try:
                    data, address = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if key and address[2] != PACKET_OUTGOING:
                    continue  # lo shows each frame twice (out and in): keep one copy
                frames.setdefault(key or address[0], []).append((time.time(), data))
        return frames

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


def to_pcap(frames: list[tuple[float, bytes]]) -> bytes:
    """Frames as a classic little-endian pcap file (readable by tcpdump, Wireshark and dpkt)."""
    parts = [PCAP_HEADER]
    for ts, data in frames:
        seconds = int(ts)
        parts.append(struct.pack("<IIII", seconds, int((ts - seconds) * 1e6), len(data), len(data)))
        parts.append(data)
    return b"".join(parts)


def save(path: Path, pcap: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pcap)
    return str(path)
