"""Record what tshark sees in the shared captures, for tests that must run without tshark.

    python tests/expected/record_tshark.py [DATA_DIR]         # rewrite tshark_dns.json
    python tests/expected/record_tshark.py --print CAPTURE    # one capture, JSON to stdout

`tests/test_pcap_dns.py` runs this script with --print when tshark is installed (so the
comparison is always against the tshark at hand) and falls back on the recorded JSON when
it is not. Recorded files keep their first `MAX_RECORDED_FRAMES` DNS frames in full, to
stay small; the live comparison covers every frame.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CAPTURES = [
    "pcaps/dns/bad-dns-traffic.pcap",
    "pcaps/dns/csanders_dns_axfr.pcapng",
    "pcaps/dns/csanders_dns_tcp.pcapng",
    "pcaps/dns/csanders_small/dns.pcap",
    "pcaps/dns/csanders_small/dns_query_nonexistent.pcapng",
    "pcaps/dns/csanders_small/dns_query_response.pcapng",
    "pcaps/dns/csanders_small/dns_reverse_lookup.pcapng",
    "pcaps/dns/csanders_small/dns_tcp.pcapng",
    "pcaps/dns/dns2tcp_tunnel_netrack_2018-03-23.pcap",
    "pcaps/dns/dsc_dnso1tcp.pcap",
    "pcaps/dns/tcpdump_edns-opts.pcap",
    "pcaps/dns/zeek_dns-edns-ecs.pcap",
    "pcaps/dns/zeek_ipv6-fragmented-dns.pcap",
    "pcaps/encap/zeek_http-vlan-0.pcap",
    "pcaps/encap/zeek_mixed-vlan-mpls.pcap",
    "pcaps/encap/zeek_pcapng-multi-interface.pcapng",
    "pcaps/encap/zeek_vlan-qinqinq.pcap",
    "pcaps/linktypes/dnsjit_pellets_rawip6.pcap",
    "pcaps/linktypes/dnsjit_sll2.pcap",
    "pcaps/linktypes/mdns_linux_sll.pcap",
    "pcaps/mixed/ndpi_1kxun.pcap",
    "pcaps/mixed/ndpi_netflix.pcap",
    "pcaps/mixed/nfstream_skype.pcap",
    "pcaps/mixed/zeek_wikipedia.pcap",
    "pcaps/attacks/slips_test7-malicious.pcap",
    "pcaps/corrupt/malformed_dns.pcap",
    "pcaps/corrupt/ndpi_fuzz-2021-10-13.pcap",
    "pcaps/corrupt/ndpi_ip_fragmented_garbage.pcap",
    "pcaps/corrupt/ppa_http-fault-post_truncated.pcap",
    "pcaps/corrupt/tcpdump_dns-badlabel.pcap",
    "pcaps/corrupt/zeek_tcp-truncated-header.pcap",
    "pcaps/corrupt/zeek_trunc-hdr.pcap",
]
MAX_RECORDED_FRAMES = 40
EXPECTED = Path(__file__).with_name("tshark_dns.json")
DEFAULT_DATA = Path(os.environ.get("BEAMLYTICS_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

# tshark fields per DNS frame; a frame may hold several messages (DNS over TCP), so every
# field is a list. The resource-record fields cover all sections, answers first.
FIELDS = {
    "ids": "dns.id",
    "responses": "dns.flags.response",
    "qnames": "dns.qry.name",
    "qtypes": "dns.qry.type",
    "rcodes": "dns.flags.rcode",
    "answer_counts": "dns.count.answers",
    "rr_types": "dns.resp.type",
    "ttls": "dns.resp.ttl",
    "a": "dns.a",
    "aaaa": "dns.aaaa",
    "cname": "dns.cname",
    "malformed": "_ws.malformed",
}
_INTEGER_FIELDS = {"ids", "responses", "qtypes", "rcodes", "answer_counts", "rr_types", "ttls"}
# Neither occurs in DNS names as tshark prints them (it escapes control bytes).
# Split output on "\n" only: str.splitlines would also split on the aggregator.
_SEPARATOR, _AGGREGATOR = "\t", "\x1e"


def _run(arguments: list[str]) -> str:
    done = subprocess.run(arguments, capture_output=True, check=False)
    return done.stdout.decode("utf-8", "replace")


def tshark_capture(path: str) -> dict:
    """Frame count and per-DNS-frame fields of one capture, as tshark decodes it.

    One pass over every frame (no display filter): frames with a DNS id are the DNS ones,
    mDNS and LLMNR included, since tshark decodes those with its DNS dissector too.
    """
    arguments = ["tshark", "-n", "-r", path, "-T", "fields",
                 "-E", f"separator={_SEPARATOR}", "-E", f"aggregator={_AGGREGATOR}", "-E", "occurrence=a",
                 "-e", "frame.number"]
    for field in FIELDS.values():
        arguments += ["-e", field]
    frames = 0
    dns_frames = []
    for line in _run(arguments).split("\n"):
        if not line:
            continue
        frames += 1
        number, *values = line.split(_SEPARATOR)
        if not values[0]:
            continue
        record: dict = {"frame": int(number)}
        for name, value in zip(FIELDS, values):
            parts = value.split(_AGGREGATOR) if value else []
            record[name] = [int(part, 0) for part in parts] if name in _INTEGER_FIELDS else parts
        record["malformed"] = bool(record["malformed"])
        dns_frames.append(record)
    return {"frames": frames, "dns_frame_count": len(dns_frames), "dns_frames": dns_frames}


def main(arguments: list[str]) -> None:
    if arguments[:1] == ["--print"]:
        json.dump(tshark_capture(arguments[1]), sys.stdout)
        return
    data = Path(arguments[0]) if arguments else DEFAULT_DATA
    recorded = {}
    for relative in CAPTURES:
        capture = tshark_capture(str(data / relative))
        capture["dns_frames"] = capture["dns_frames"][:MAX_RECORDED_FRAMES]
        recorded[relative] = capture
    EXPECTED.write_text(json.dumps(recorded, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
