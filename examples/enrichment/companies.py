"""What the enrichment example's tables hold: the columns, and fake data to fill them.

Shared by the API (``app.py``: which columns may be enriched), the seeder
(``seed.py``: company names) and the worker (``worker.py``: values and
failures). Each row of a table is one company; ``data`` holds one key per
column, and a key listed in ``enriching_columns`` is a cell being filled.

A cell whose enrichment failed holds an error marker instead of a value::

    data["ceo"] == {"error": "provider timed out"}

The page shows such a cell in its error state; enriching it again replaces
the marker with a value (or another marker).
"""

from __future__ import annotations

import random
import re
from typing import Any

#: The columns of the grid, in order. ``company`` is the input, given at seeding.
COLUMNS: tuple[str, ...] = ("company", "domain", "employees", "funding", "ceo")

#: The columns a user may ask to enrich.
ENRICHABLE: tuple[str, ...] = COLUMNS[1:]

#: What a provider may answer instead of a value, as an error marker's message.
ERRORS: tuple[str, ...] = ("provider timed out", "no match found", "rate limited by provider")

_PREFIXES = (
    "Acme", "Apex", "Aurora", "Beacon", "Blue", "Bright", "Cedar", "Cobalt", "Copper", "Crest",
    "Delta", "Ember", "Evergreen", "Falcon", "Fern", "Granite", "Harbor", "Helix", "Iris",
    "Juniper", "Keystone", "Lumen", "Maple", "Meridian", "Nimbus", "Nova", "Oak", "Orbit", "Pine",
    "Quartz",
)  # fmt: skip
_SUFFIXES = (
    "Analytics", "Biotech", "Cloud", "Dynamics", "Energy", "Foods", "Freight", "Health", "Labs",
    "Logistics", "Media", "Networks", "Robotics", "Security", "Systems", "Works",
)  # fmt: skip
_FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Claude", "Dorothy", "Edsger", "Frances", "Grace", "Hedy", "Ivan",
    "Joan", "Ken", "Katherine", "Leslie", "Margaret", "Niklaus", "Radia", "Shafi", "Tim",
    "Yukihiro",
)  # fmt: skip
_LAST_NAMES = (
    "Allen", "Bartik", "Cerf", "Dijkstra", "Estrin", "Floyd", "Goldwasser", "Hopper", "Kahn",
    "Lamport", "Liskov", "Lovelace", "Perlman", "Ritchie", "Shannon", "Sutherland", "Thompson",
    "Turing", "Wirth", "Wing",
)  # fmt: skip
_ROUNDS = ("Seed", "Series A", "Series B", "Series C", "Series D")
_TLDS = (".com", ".io", ".ai", ".co")


def company_names(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct company names, the same ones for the same ``seed``."""
    names = [f"{prefix} {suffix}" for prefix in _PREFIXES for suffix in _SUFFIXES]
    random.Random(seed).shuffle(names)
    # More rows than combinations: number the rest, so names stay distinct.
    return [
        names[i] if i < len(names) else f"{names[i % len(names)]} {i // len(names) + 1}"
        for i in range(count)
    ]


def fake_value(column: str, company: str, rng: random.Random) -> Any:
    """What a data provider might answer for ``column`` of ``company`` (any JSON value)."""
    if column == "domain":
        return re.sub(r"[^a-z0-9]+", "", company.lower()) + rng.choice(_TLDS)
    if column == "employees":
        # Log-uniform: most companies are small, a few are large.
        return round(10 ** rng.uniform(0.7, 4.3))
    if column == "funding":
        return f"${rng.uniform(0.5, 250):.1f}M {rng.choice(_ROUNDS)}"
    if column == "ceo":
        return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    return f"{column} of {company}"


def error_marker(rng: random.Random) -> dict[str, str]:
    """The value written into a cell whose enrichment failed."""
    return {"error": rng.choice(ERRORS)}
