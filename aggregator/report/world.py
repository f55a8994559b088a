"""Country outlines, centres and names, offline, from the `countryinfo` package's bundled data.

The report's geography section names countries and the world map draws them;
both must work on an aggregator with no internet access, so the data comes
from a pinned package rather than a map service.
"""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def outlines() -> dict[str, tuple[list, tuple[float, float] | None, str]]:
    """alpha-2 -> (outer rings as (lon, lat) arrays, (lat, lon) centre, name), from countryinfo's data."""
    from countryinfo import all_countries

    out = {}
    for c in all_countries():
        try:
            code = c.iso()["alpha2"]
            geo = c.geo_json()
        except Exception:  # noqa: BLE001 - a country without data is simply not drawn
            continue
        rings = []
        for feature in geo.get("features", []) if geo else []:
            g = feature.get("geometry") or {}
            polys = g.get("coordinates", [])
            if g.get("type") == "Polygon":
                polys = [polys]
            for poly in polys:
                if poly:
                    ring = np.asarray(poly[0], dtype=float)
                    if np.ptp(ring[:, 0]) > 180:  # crosses the antimeridian: keep it on one side
                        ring[ring[:, 0] < 0, 0] += 360
                    rings.append(ring)
        try:
            centre = tuple(c.latlng())
        except Exception:  # noqa: BLE001
            centre = None
        out[code] = (rings, centre if centre and len(centre) == 2 else None, c.name().title())
    return out


def country_name(code: str) -> str:
    entry = outlines().get(code)
    return entry[2] if entry else {"ZZ": "unknown", "(other)": "other countries"}.get(code, code)
