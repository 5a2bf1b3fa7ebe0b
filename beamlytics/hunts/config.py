"""Parameters of the hunts, with defaults taken from RITA and the literature (see docs/hunts.md)."""
from __future__ import annotations

from dataclasses import dataclass

from beamlytics.options_catalog import DAY_US, HUNT_CAP

FLOW_HUNTS = ("beacon", "long", "strobe", "scan")
DNS_HUNTS = ("dns_tunnel",)
HUNTS_OF_TABLE = {"named_flows": FLOW_HUNTS, "dns": DNS_HUNTS}
# The finding names each hunt option produces.
OUTPUT_HUNTS = {"beacon": ("beacon",), "long": ("long",), "strobe": ("strobe",),
                "scan": ("vertical_scan", "horizontal_scan"), "dns_tunnel": ("dns_tunnel",)}

# Zeek conn_state values of an attempt that never became a working connection:
# no answer (S0), refused (REJ), reset or closed before the handshake completed.
FAILED_STATES = frozenset({"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR"})
# Reset after the handshake: a failed attempt only when the server sent nothing after its
# SYN-ACK (a scanner probing an open port, then resetting). Browsers reset established
# connections that carried data all the time.
RESET_STATES = frozenset({"RSTO", "RSTR"})
# Established and never closed by both sides inside the log's view: still open.
OPEN_STATES = frozenset({"S1", "S2", "S3"})


@dataclass(frozen=True)
class HuntConfig:
    horizon_us: int = DAY_US  # aligned to the epoch, so a day horizon is a UTC day
    slide_us: int | None = None  # a new horizon starts every slide; None: horizons follow each other (tumbling)
    cap: int = HUNT_CAP
    # Beacons (RITA: unique_connection_threshold, score weights, histogram and duration settings).
    beacon_min_connections: int = 4
    beacon_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)  # timestamps, sizes, duration, histogram
    histogram_bins: int = 24
    histogram_mode_sensitivity: float = 0.05
    histogram_bimodal_outlier_removal: int = 1
    histogram_bimodal_min_hours: int = 11
    duration_min_hours: int = 6
    duration_ideal_hours: int = 12
    beacon_thresholds: tuple[float, ...] = (50, 70, 90, 100)  # RITA's beacon score thresholds, in percent
    # Long connections: summed duration per pair, seconds (RITA: 1 h, 4 h, 8 h, 12 h).
    long_thresholds: tuple[float, ...] = (3_600, 14_400, 28_800, 43_200)
    # Strobes: RITA's one connection per second over the horizon is "high"; fractions of it grade below.
    strobe_rate_per_second: float = 1.0
    # Scans: distinct targets with a failed attempt. Base = Slips' minimum, low = Zeek scan.zeek's
    # thresholds (15 ports, 25 hosts), medium/high = nmap's top 100/1000 ports and a full /24 sweep.
    vertical_thresholds: tuple[float, ...] = (5, 15, 100, 1_000)
    horizontal_thresholds: tuple[float, ...] = (5, 25, 100, 256)
    # DNS tunnelling: RITA's C2-over-DNS unique-subdomain thresholds; name length (SANS: > 52
    # characters is suspicious) and entropy (encoded payload ≈ 4+ bits/char, hostnames ≈ 2.5-3.5).
    tunnel_subdomain_thresholds: tuple[float, ...] = (100, 500, 800, 1_000)
    tunnel_length_thresholds: tuple[float, ...] = (20, 30, 40, 52)
    tunnel_entropy_thresholds: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)
    alarm: float = 0.5  # findings at or above this are counted as alarms (RITA's "low" threshold reached)

    def __post_init__(self):
        if self.horizon_us <= 0:
            raise ValueError("the horizon must be positive")
        if self.step_us <= 0 or self.horizon_us % self.step_us:
            raise ValueError("the slide must be positive and divide the horizon")
        if self.histogram_bins < 1 or self.histogram_mode_sensitivity <= 0:
            raise ValueError("the beacon histogram needs at least one bin and a positive mode sensitivity")
        if self.cap < 16:
            raise ValueError("the cap must be at least 16")
        if abs(sum(self.beacon_weights) - 1.0) > 1e-9 or min(self.beacon_weights) < 0:
            raise ValueError("beacon weights must be non-negative and sum to 1")
        for name in self.__dataclass_fields__:
            values = getattr(self, name)
            if name.endswith("_thresholds") and any(low >= high for low, high in zip(values, values[1:])):
                raise ValueError(f"{name} must increase: base < low < medium < high")

    @property
    def step_us(self) -> int:
        return self.horizon_us if self.slide_us is None else self.slide_us

    @property
    def horizon_seconds(self) -> float:
        return self.horizon_us / 1e6

    @property
    def strobe_threshold(self) -> float:
        return self.strobe_rate_per_second * self.horizon_seconds
