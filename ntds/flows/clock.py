"""The meter's one time source.

NFStream 6.6.0 truncates packet timestamps to whole milliseconds (spec 5.3), so
every time column is in microseconds at millisecond precision. Keeping the
conversion here means a microsecond-capable engine (spec 5.3, option 2) changes
this module and nothing else.

The engine also reads a classic pcap's unsigned 32-bit seconds as signed: a
packet after 2038-01-19 arrives as a negative time wrapped to a huge unsigned
millisecond count. `engine_ms` undoes that, so captures up to 2106 (the end of
the pcap format) meter with their true times.
"""

from __future__ import annotations

TIME_PRECISION_US = 1000
"""Resolution of every time value the meter produces, in microseconds."""

_WRAPPED = 1 << 63
_U64 = 1 << 64
_PCAP_SPAN_MS = (1 << 32) * 1000


def engine_ms(ms: int) -> int:
    """A time the engine reports, in ms since the epoch, with the 2038 wrap undone."""
    return ms - _U64 + _PCAP_SPAN_MS if ms >= _WRAPPED else ms


def packet_time_us(packet) -> int:
    """Arrival time of an NFStream packet in integer microseconds since the epoch."""
    return engine_ms(packet.time) * 1000
