"""Input selection: folders, globs, and days read from each tool's rotated names."""
import datetime as dt

import pytest

from beamlytics.inputs import DayRange, InputError, day_of_path, expand_inputs


@pytest.mark.parametrize("path, day", [
    ("/logs/zeek/2024-05-01/dns.04:00:00-05:00:00.log.gz", "2024-05-01"),  # Zeek day folders
    ("/var/log/squid/access.log-20240502.gz", "2024-05-02"),  # Squid rotated by logrotate
    ("/var/log/named/bind.log-20240503", "2024-05-03"),  # BIND rotated
    ("/capture/dnscap.20240504.235959.123456", "2024-05-04"),  # dnscap base.YYYYMMDD.HHmmSS.uSec
    ("/tstat/2024/05-May/2024_05_05_10_00.out/log_tcp_complete.gz", "2024-05-05"),  # Tstat tree
    ("/logs/dns.log", None),
    ("/logs/conn.23:00:00-00:00:00.log", None),  # a rotation time is not a day
    ("/logs/access.log-20241341", None),  # not a date
])
def test_day_of_path(path, day):
    assert day_of_path(path) == (dt.date.fromisoformat(day) if day else None)


def test_expand_inputs_by_folder_glob_and_days(tmp_path):
    for name in ("2024-05-01/dns.log", "2024-05-02/dns.log", "2024-05-03/dns.log", "undated/dns.log",
                 "access.log-20240502.gz"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    days = DayRange(dt.date(2024, 5, 2), dt.date(2024, 5, 2))
    selected = [p.replace(str(tmp_path) + "/", "") for p in expand_inputs([str(tmp_path)], days)]
    # Files without a day in their path are kept: their records are filtered by time instead.
    assert selected == ["2024-05-02/dns.log", "access.log-20240502.gz", "undated/dns.log"]
    assert len(expand_inputs([str(tmp_path / "2024-05-0*" / "dns.log")])) == 3


def test_a_missing_input_is_an_error_the_user_sees():
    with pytest.raises(InputError, match="no such file or folder: /no/such"):
        expand_inputs(["/no/such"])
