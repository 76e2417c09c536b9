"""Units the way operators write them (lepton.units)."""

import pytest

from lepton import units


@pytest.mark.parametrize(
    "text,millis",
    [("2", 2000), ("1.5", 1500), ("500m", 500), (3, 3000), ("0.25", 250)],
)
def test_parse_cpu(text, millis):
    assert units.parse_cpu(text) == millis


@pytest.mark.parametrize(
    "text,nbytes",
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1Ti", 2**40),
        ("1G", 10**9),
        ("1024", 1024),
        ("50GiB", 50 * 2**30),
    ],
)
def test_parse_memory(text, nbytes):
    assert units.parse_memory(text) == nbytes


@pytest.mark.parametrize(
    "text,mbps",
    [("10G", 10_000), ("100M", 100), ("1.5G", 1500), ("10Gbps", 10_000), ("500k", 1), ("2000000", 2)],
)
def test_parse_network_is_bits_per_second(text, mbps):
    assert units.parse_network(text) == mbps


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("3", 3.0)])
def test_parse_duration(text, seconds):
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "fn,text",
    [
        (units.parse_cpu, "two"),
        (units.parse_cpu, "2Gi"),
        (units.parse_memory, "12XB"),
        (units.parse_memory, "-1"),
        (units.parse_network, "10Q"),
        (units.parse_duration, "5 days"),
    ],
)
def test_bad_units_raise_value_error_naming_the_text(fn, text):
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        fn(text)


def test_format_round_trips():
    assert units.format_memory(50 * 2**30) == "50Gi"
    assert units.format_network(10_000) == "10G"
    assert units.format_cpu(1500) == "1.5"
    assert units.format_cpu(500) == "500m"
