"""Parsing and printing of resource quantities the way people write them.

- cpu: "2" or "1.5" cores, "500m" millicores  -> int millicores
- memory: "512Mi", "1Gi", "1Ti" (binary), "1G", "500M", "1k" (decimal), plain bytes -> int bytes
- network: bits per second like NICs are sold: "10G" = 10 Gbit/s, "100M", "1.5G",
  "500k"; an optional "bps"/"bit"/"b" suffix; a plain number is bits/s -> int Mbit/s
  (rounded up, so a non-zero request never becomes 0)
- durations: "500ms", "1s", "2m", "1h", plain seconds -> float seconds

Every parser raises ValueError with a message that names the bad text.
"""

from __future__ import annotations

import math
import re

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

_MEM_SUFFIX = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "B": 1,
}
_NET_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _split(text: str, what: str) -> tuple[float, str]:
    s = str(text).strip()
    m = re.fullmatch(_NUM + r"\s*([A-Za-z]*)", s)
    if not m:
        raise ValueError(f"invalid {what} {text!r}: expected a number with an optional unit")
    return float(m.group(1)), m.group(2)


def parse_cpu(text: str | int | float) -> int:
    """'2' -> 2000, '1.5' -> 1500, '500m' -> 500 (millicores)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, "cpu")
    if unit == "m":
        millis = value
    elif unit == "":
        millis = value * 1000
    else:
        raise ValueError(f"invalid cpu {text!r}: use cores ('2', '0.5') or millicores ('500m')")
    return int(round(millis))


def parse_memory(text: str | int) -> int:
    """'512Mi' -> 536870912, '1G' -> 10**9, '1024' -> 1024 (bytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    value, unit = _split(text, "memory")
    if unit not in _MEM_SUFFIX:
        raise ValueError(f"invalid memory {text!r}: unknown unit {unit!r} (use Ki, Mi, Gi, Ti, k, M, G, T)")
    return int(round(value * _MEM_SUFFIX[unit]))


def parse_network(text: str | int) -> int:
    """Bits per second like NICs are sold -> Mbit/s: '10G' -> 10000, '100M' -> 100."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, "network")
    base = unit
    for tail in ("bps", "bit", "b"):
        if base.lower().endswith(tail) and base[: len(base) - len(tail)] in _NET_SUFFIX:
            base = base[: len(base) - len(tail)]
            break
    if base not in _NET_SUFFIX:
        raise ValueError(f"invalid network {text!r}: use bits/s with k, M, G or T (e.g. '10G', '100M')")
    bits = value * _NET_SUFFIX[base]
    return int(math.ceil(bits / 10**6 - 1e-9))


def parse_duration(text: str | int | float) -> float:
    """'500ms' -> 0.5, '2s' -> 2.0, '1m' -> 60.0, '3' -> 3.0 (seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    value, unit = _split(text, "duration")
    scale = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(unit)
    if scale is None:
        raise ValueError(f"invalid duration {text!r}: use ms, s, m or h (e.g. '500ms', '2s')")
    return value * scale


def format_cpu(millis: int) -> str:
    if millis % 1000 == 0:
        return str(millis // 1000)
    if millis < 1000:
        return f"{millis}m"
    return f"{millis / 1000:.2f}".rstrip("0").rstrip(".")


def format_memory(nbytes: int) -> str:
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(nbytes) >= size:
            v = nbytes / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{nbytes}B"


def format_network(mbps: int | float) -> str:
    if abs(mbps) >= 1000:
        v = mbps / 1000
        return (f"{v:.0f}" if v == int(v) else f"{v:.1f}") + "G"
    return (f"{mbps:.0f}" if mbps == int(mbps) else f"{mbps:.1f}") + "M"
