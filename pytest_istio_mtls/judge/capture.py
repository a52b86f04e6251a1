"""Packet-capture analysis: find the probe's connection, walk its TLS records, look for the marker.

Input is a classic pcap (Ethernet, Linux cooked v1/v2 or raw IP link types), as written by
``tcpdump -w`` or by the local backend's capture. The analysis is deliberately strict: the flow
is identified by its exact client address and port, so packets of other connections never count
as evidence for this probe.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dpkt

from .observation import CaptureEvidence

Address = tuple[str, int]
TLS_CONTENT_TYPES = (20, 21, 22, 23, 24)


@dataclass(frozen=True)
class Segment:
    ts: float
    src: Address
    dst: Address
    seq: int
    flags: int
    payload: bytes


def _ip_of(link_type: int, frame: bytes) -> dpkt.Packet | None:
    if link_type == dpkt.pcap.DLT_EN10MB:
        eth = dpkt.ethernet.Ethernet(frame)
        return eth.data if isinstance(eth.data, dpkt.ip.IP | dpkt.ip6.IP6) else None
    if link_type == dpkt.pcap.DLT_LINUX_SLL:
        sll = dpkt.sll.SLL(frame)
        return sll.data if isinstance(sll.data, dpkt.ip.IP | dpkt.ip6.IP6) else None
    if link_type == 276:  # LINUX_SLL2: 20-byte header, protocol in the first two bytes
        protocol = struct.unpack("!H", frame[:2])[0]
        body = frame[20:]
        if protocol == 0x0800:
            return dpkt.ip.IP(body)
        return dpkt.ip6.IP6(body) if protocol == 0x86DD else None
    if link_type in (dpkt.pcap.DLT_RAW, 101, 12):
        version = frame[0] >> 4 if frame else 0
        if version == 4:
            return dpkt.ip.IP(frame)
        return dpkt.ip6.IP6(frame) if version == 6 else None
    return None


def _address(ip: dpkt.Packet, raw: bytes) -> str:
    family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    return socket.inet_ntop(family, raw)


def segments(pcap: bytes) -> Iterator[Segment]:
    """Every TCP segment in the capture; malformed frames are skipped, not fatal."""
    if not pcap:
        return
    reader = dpkt.pcap.Reader(io.BytesIO(pcap))
    link_type = reader.datalink()
    for ts, frame in reader:
        try:
            ip = _ip_of(link_type, frame)
        except (dpkt.UnpackError, struct.error, IndexError):
            continue
        if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        yield Segment(float(ts), (_address(ip, ip.src), tcp.sport), (_address(ip, ip.dst), tcp.dport),
                      tcp.seq, tcp.flags, bytes(tcp.data))


def _stream(parts: list[Segment]) -> bytes:
    """Reassemble one direction by sequence number, dropping retransmitted bytes."""
    if not parts:
        return b""
    ordered = sorted(parts, key=lambda s: s.seq)
    data = bytearray()
    next_seq: int | None = None
    for segment in ordered:
        if not segment.payload:
            continue
        if next_seq is None:
            next_seq = segment.seq
        offset = next_seq - segment.seq
        if offset < len(segment.payload):
            data += segment.payload[max(offset, 0):]
            next_seq = segment.seq + len(segment.payload)
    return bytes(data)


def tls_records(stream: bytes) -> list[int]:
    """Content types of the TLS records a byte stream starts with (empty if it is not TLS)."""
    types: list[int] = []
    offset = 0
    while offset + 5 <= len(stream):
        content_type, major, _minor, length = struct.unpack("!BBBH", stream[offset:offset + 5])
        if content_type not in TLS_CONTENT_TYPES or major != 3 or length > 18432:
            break
        types.append(content_type)
        offset += 5 + length
    return types


def client_hello(stream: bytes) -> tuple[bool, str, list[str]]:
    """(is a ClientHello, SNI, ALPN protocols) for a stream that starts with a TLS handshake."""
    if len(stream) < 9 or stream[0] != 22 or stream[5] != 1:
        return False, "", []
    length = struct.unpack("!H", stream[3:5])[0]
    body = stream[9:5 + length]
    sni, alpn = "", []
    try:
        offset = 2 + 32  # version, random
        offset += 1 + body[offset]  # session id
        offset += 2 + struct.unpack("!H", body[offset:offset + 2])[0]  # cipher suites
        offset += 1 + body[offset]  # compression methods
        end = offset + 2 + struct.unpack("!H", body[offset:offset + 2])[0]
        offset += 2
        while offset + 4 <= min(end, len(body)):
            ext_type, ext_len = struct.unpack("!HH", body[offset:offset + 4])
            ext = body[offset + 4:offset + 4 + ext_len]
            if ext_type == 0 and len(ext) > 5:  # server_name
                name_len = struct.unpack("!H", ext[3:5])[0]
                sni = ext[5:5 + name_len].decode("ascii", "replace")
            elif ext_type == 16 and len(ext) > 2:  # ALPN
                position = 2
                while position < len(ext):
                    size = ext[position]
                    alpn.append(ext[position + 1:position + 1 + size].decode("ascii", "replace"))
                    position += 1 + size
            offset += 4 + ext_len
    except (IndexError, struct.error):
        pass
    return True, sni, alpn


def analyse(pcap: bytes, *, interface: str, server: Address, client: Address | None, marker: str,
            pcap_path: str = "") -> CaptureEvidence:
    """Summarise the connection ``client`` → ``server`` in ``pcap``.

    ``client`` is the exact source address of the connection on the wire (from the client
    sidecar's access log or the client socket). When it is unknown, the flow is taken only if it
    is the single connection to ``server`` in the capture.
    """
    evidence = CaptureEvidence(interface=interface, pcap=pcap_path)
    try:
        all_segments = list(segments(pcap))
    except (ValueError, dpkt.UnpackError) as exc:
        evidence.note = f"unreadable capture: {exc}"
        return evidence
    to_server = [s for s in all_segments if s.dst == server]
    if client is None:
        sources = {s.src for s in to_server}
        if len(sources) != 1:
            evidence.note = (f"client address unknown and {len(sources)} connections to "
                             f"{server[0]}:{server[1]} were captured")
            return evidence
        client = sources.pop()
    forward = [s for s in to_server if s.src == client]
    backward = [s for s in all_segments if s.src == server and s.dst == client]
    if not forward:
        evidence.note = (f"no packets from {client[0]}:{client[1]} to {server[0]}:{server[1]} among "
                         f"{len(all_segments)} captured TCP segments")
        return evidence
    evidence.flow = f"{client[0]}:{client[1]} > {server[0]}:{server[1]}"
    evidence.packets = len(forward) + len(backward)
    up, down = _stream(forward), _stream(backward)
    evidence.payload_bytes = len(up) + len(down)
    evidence.tls_records = len(tls_records(up)) + len(tls_records(down))
    evidence.client_hello, evidence.sni, evidence.alpn = client_hello(up)
    needle = marker.encode()
    evidence.marker_in_clear = needle in up or needle in down or any(
        needle in s.payload for s in (*forward, *backward))
    return evidence
