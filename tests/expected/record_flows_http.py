"""Record what tshark and nfstream see in the shared captures, for tests that run without them.

    python tests/expected/record_flows_http.py [DATA_DIR]    # rewrite flows_http.json

`tests/test_pcap_flows.py`, `test_pcap_http.py` and `test_tls.py` call the functions below
when tshark / nfstream are installed (so the comparison is against the tools at hand) and
fall back on the recorded JSON when they are not. Each reference is a sorted list of
tuples; the JSON keeps its count and SHA-256, and the tuples themselves only when there
are few of them, to stay small.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HTTP_CAPTURES = [
    "pcaps/http/csanders_http_espn.pcapng",
    "pcaps/http/csanders_http_ip4and6.pcapng",
    "pcaps/http/zeek_1000-requests-one-dropped-response.pcap.gz",
    "pcaps/http/zeek_bro.org.pcap",
    "pcaps/attacks/ndpi_WebattackRCE.pcap",
    "pcaps/attacks/ndpi_WebattackSQLinj.pcap",
    "pcaps/encap/zeek_http-vlan-0.pcap",
    "pcaps/encap/zeek_mixed-vlan-mpls.pcap",
    "pcaps/encap/zeek_vlan-qinqinq.pcap",
    "pcaps/mixed/ndpi_1kxun.pcap",
    "pcaps/mixed/ndpi_netflix.pcap",
    "pcaps/mixed/nfstream_skype.pcap",
    "pcaps/mixed/zeek_wikipedia.pcap",
]
SNI_CAPTURES = [
    "pcaps/tls/ndpi_alexa-app.pcapng",
    "pcaps/tls/ndpi_reddit_ipv6.pcap",
    "pcaps/tls/ndpi_sites.pcapng",
    "pcaps/tls/zeek_tls-conn-with-extensions.pcap",
    "pcaps/mixed/ndpi_1kxun.pcap",
    "pcaps/mixed/ndpi_netflix.pcap",
    "pcaps/mixed/nfstream_skype.pcap",
    "pcaps/mixed/zeek_wikipedia.pcap",
]
# Captures where our flows and nfstream's are defined alike (see test_pcap_flows.py for
# the ones left out and why).
FLOW_CAPTURES = [
    "pcaps/mixed/ndpi_1kxun.pcap",
    "pcaps/mixed/ndpi_netflix.pcap",
    "pcaps/mixed/nfstream_skype.pcap",
    "pcaps/mixed/zeek_wikipedia.pcap",
    "pcaps/tls/ndpi_alexa-app.pcapng",
    "pcaps/tls/ndpi_reddit_ipv6.pcap",
    "pcaps/tls/ndpi_sites.pcapng",
    "pcaps/tls/zeek_tls-conn-with-extensions.pcap",
    "pcaps/http/csanders_http_espn.pcapng",
    "pcaps/http/zeek_1000-requests-one-dropped-response.pcap.gz",
    "pcaps/attacks/ndpi_icmp-tunnel.pcap",
    "pcaps/attacks/ndpi_synscan.pcap",
    "pcaps/attacks/slips_test12-icmp-portscan.pcap",
    "pcaps/attacks/slips_test7-malicious.pcap",
    "pcaps/attacks/zeek_dhcp_flood.pcap",
    "pcaps/encap/zeek_mixed-vlan-mpls.pcap",
    "pcaps/encap/zeek_vlan-qinqinq.pcap",
    "pcaps/linktypes/mdns_linux_sll.pcap",
    "pcaps/bench/zeek_echo-connections.pcap.gz",
]
# Captures with fragmented datagrams: flows and packet counts agree, bytes do not (nfstream
# counts only a first fragment's IP length and drops the others; we count the datagram).
FRAGMENTED_CAPTURES = [
    "pcaps/dns/zeek_ipv6-fragmented-dns.pcap",
    "pcaps/dns/zeek_dns-edns-ecs.pcap",
]
# Short timeouts so that the timeout logic, not only the table, is compared. nfstream
# compares times in whole milliseconds, we in microseconds: a gap of 1.999999 s is 2000 ms
# to nfstream. TCP's SYN retries (after 1, 2, 4, 8 s) sit on such boundaries for idle
# timeouts of 1 or 2 s, so these values keep clear of them.
SHORT_TIMEOUTS = {"active_timeout": 5, "idle_timeout": 3}
TIMEOUT_CAPTURES = ["pcaps/mixed/nfstream_skype.pcap", "pcaps/attacks/slips_test7-malicious.pcap"]

MAX_ITEMS_KEPT = 25
RECORDED = Path(__file__).with_name("flows_http.json")


def summary(items: list) -> dict:
    """Sorted tuples -> count, digest, and the tuples themselves when few."""
    items = sorted(tuple(item) for item in items)
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    result = {"count": len(items), "sha256": digest}
    if len(items) <= MAX_ITEMS_KEPT:
        result["items"] = [list(item) for item in items]
    return result


def _tshark(path: Path, display_filter: str, fields: list[str]) -> list[list[str]]:
    command = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for name in fields:
        command += ["-e", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in output.splitlines()]


def tshark_http_requests(path: Path) -> list[tuple[str, str, str]]:
    """(method, host, uri) of every HTTP request; SSDP's NOTIFY is an `http.notification`."""
    rows = _tshark(path, "http.request or http.notification",
                   ["http.request.method", "http.host", "http.request.uri"])
    return [tuple(row) for row in rows]


def tshark_sni(path: Path) -> list[tuple]:
    """(client, client port, server, server port, SNI) of ClientHellos over TCP, each once."""
    rows = _tshark(
        path, "tcp and tls.handshake.type == 1 and tls.handshake.extensions_server_name",
        ["ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport",
         "tls.handshake.extensions_server_name"],
    )
    found = {(v4s or v6s, int(sport), v4d or v6d, int(dport), sni) for v4s, v6s, sport, v4d, v6d, dport, sni in rows}
    return sorted(found)


def plain_capture(path: Path, folder: str) -> Path:
    """nfstream reads no gzip: give it a decompressed copy."""
    if path.suffix != ".gz":
        return path
    target = Path(folder) / path.stem
    with gzip.open(path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    return target


def nfstream_flows(path: Path, active_timeout: float = 1800, idle_timeout: float = 120,
                   with_bytes: bool = True) -> list[tuple]:
    """nfstream's flows as (proto, end A, port A, end B, port B, packets A->B, B->A[, bytes]),
    ends in sorted order, bytes at the IP level (accounting_mode=1)."""
    import nfstream  # only where nfstream is installed

    with tempfile.TemporaryDirectory() as folder:
        streamer = nfstream.NFStreamer(
            source=str(plain_capture(path, folder)), statistical_analysis=False, n_dissections=0,
            accounting_mode=1, active_timeout=active_timeout, idle_timeout=idle_timeout, n_meters=1,
        )
        flows = [
            flow_tuple(flow.protocol, (flow.src_ip, flow.src_port), (flow.dst_ip, flow.dst_port),
                       (flow.src2dst_packets, flow.dst2src_packets, flow.src2dst_bytes, flow.dst2src_bytes),
                       with_bytes)
            for flow in streamer
        ]
    return flows


def flow_tuple(proto: int, first: tuple, second: tuple, counts: tuple, with_bytes: bool = True) -> tuple:
    """One flow with its two ends in sorted order and the counts turned to match."""
    packets_1, packets_2, bytes_1, bytes_2 = counts
    if second < first:
        first, second, packets_1, packets_2, bytes_1, bytes_2 = second, first, packets_2, packets_1, bytes_2, bytes_1
    result = (proto, *first, *second, packets_1, packets_2)
    return result + (bytes_1, bytes_2) if with_bytes else result


def record(data_dir: Path) -> dict:
    def path(relative: str) -> Path:
        return data_dir / relative

    return {
        "http": {name: summary(tshark_http_requests(path(name))) for name in HTTP_CAPTURES},
        "sni": {name: summary(tshark_sni(path(name))) for name in SNI_CAPTURES},
        "flows": {name: summary(nfstream_flows(path(name))) for name in FLOW_CAPTURES},
        "flows_no_bytes": {
            name: summary(nfstream_flows(path(name), with_bytes=False)) for name in FRAGMENTED_CAPTURES
        },
        "flows_short_timeouts": {
            name: summary(nfstream_flows(path(name), **SHORT_TIMEOUTS)) for name in TIMEOUT_CAPTURES
        },
    }


def main() -> None:
    default = Path(os.environ.get("BEAMLYTICS_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    RECORDED.write_text(json.dumps(record(data_dir), indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORDED}")


def expected(section: str, capture: str, tool_available: bool, compute) -> dict:
    """The tool's summary for `capture`: computed now when the tool is installed, else recorded."""
    if tool_available:
        return summary(compute())
    recorded = json.loads(RECORDED.read_text())[section]
    if capture not in recorded:
        raise KeyError(f"{capture} not recorded in {RECORDED.name}: rerun {Path(__file__).name}")
    return recorded[capture]


if __name__ == "__main__":
    main()
