"""Reading where NAT moved a connection (backends/local/conntrack.py), on lines recorded from pod namespaces."""

from __future__ import annotations

from pytest_istio_mtls.backends.local import conntrack

# /proc/net/nf_conntrack in a client pod with a sidecar (recorded during a crosscheck run): an admin read, a probe
# redirected to 15001 with its port kept, a UDP line, and (third, in the same format) the rewrite crosscheck --seed 7
# hit: the socket said 33170, the sidecar logged 26119; the port had gone to another Service seconds before.
PROC = """\
ipv4     2 tcp      6 114 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=52852 dport=15000 src=127.0.0.1 dst=127.0.0.1 sport=15000 dport=52852 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 102 TIME_WAIT src=10.244.0.13 dst=10.96.54.202 sport=56074 dport=8000 src=127.0.0.1 dst=10.244.0.13 sport=15001 dport=56074 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 117 TIME_WAIT src=10.244.0.13 dst=10.96.197.56 sport=33170 dport=8000 src=127.0.0.1 dst=10.244.0.13 sport=15001 dport=26119 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 28 src=10.244.0.13 dst=10.96.0.10 sport=40000 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.0.13 sport=53 dport=40000 mark=0 zone=0 use=2
"""
# `conntrack -L -p tcp` (conntrack-tools 1.4.7, recorded in a client pod) prints the same fields without the family
# columns; its summary line goes to stderr.
TOOL = """\
tcp      6 117 TIME_WAIT src=10.244.0.13 dst=10.96.40.148 sport=43406 dport=8000 src=127.0.0.1 dst=10.244.0.13 sport=15001 dport=43406 [ASSURED] mark=0 use=1
tcp      6 6 CLOSE src=10.244.0.13 dst=10.244.0.10 sport=40596 dport=8080 src=10.244.0.10 dst=10.244.0.13 sport=8080 dport=40596 [ASSURED] mark=0 use=1
"""


def test_the_reply_tuple_says_what_the_receiver_sees() -> None:
    table = conntrack.parse(PROC)
    assert conntrack.seen_as(table, ("10.244.0.13", 33170), ("10.96.197.56", 8000)) == ("10.244.0.13", 26119)
    assert conntrack.seen_as(table, ("10.244.0.13", 56074), ("10.96.54.202", 8000)) == ("10.244.0.13", 56074)
    assert len(table) == 3  # TCP only: the UDP line is not a probe's connection


def test_an_untracked_connection_keeps_its_address() -> None:
    table = conntrack.parse(PROC)
    assert conntrack.seen_as(table, ("10.244.0.13", 33170), ("10.96.54.202", 8000)) == ("10.244.0.13", 33170)
    assert conntrack.seen_as({}, ("10.0.0.1", 1), ("10.0.0.2", 2)) == ("10.0.0.1", 1)


def test_the_tools_output_reads_the_same() -> None:
    table = conntrack.parse(TOOL)
    assert table == {(("10.244.0.13", 43406), ("10.96.40.148", 8000)): ("10.244.0.13", 43406),
                     (("10.244.0.13", 40596), ("10.244.0.10", 8080)): ("10.244.0.13", 40596)}
