"""The dashboard's event times (``eventDate`` in gateway/http/static/dashboard.js), run by
Node (skipped without it): a plain stream id's milliseconds, and a vector id's largest (an
admin's stream spans partitions: ``<n>_<ms>-<seq>_...``, not 1970 from its leading ``n``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from importlib import resources

import pytest

from publisher.partitions import encode_vector

NODE = shutil.which("node") or shutil.which("nodejs")
SCRIPT = (resources.files("gateway.http") / "static" / "dashboard.js").read_text()

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _function(name: str) -> str:
    """The source of ``function <name>(...) { ... }`` in the script (its braces matched)."""
    start = re.search(rf"^\s*function {name}\(", SCRIPT, re.MULTILINE)
    assert start is not None, name
    depth = 0
    for i in range(SCRIPT.index("{", start.end()), len(SCRIPT)):
        depth += {"{": 1, "}": -1}.get(SCRIPT[i], 0)
        if depth == 0:
            return SCRIPT[start.start() : i + 1]
    raise AssertionError(f"unbalanced function {name}")


def event_dates(ids: list[str]) -> list[int]:
    """What ``eventDate`` makes of each id, as milliseconds since the epoch."""
    program = (
        f"{_function('eventDate')}\n"
        f"const ids = {json.dumps(ids)};\n"
        "process.stdout.write(JSON.stringify(ids.map((id) => eventDate(id).getTime())));\n"
    )
    assert NODE is not None
    out = subprocess.run(
        [NODE, "-e", program], capture_output=True, text=True, timeout=30, check=True
    )
    return [int(ms) for ms in json.loads(out.stdout)]


def test_a_plain_id_gives_its_milliseconds() -> None:
    assert event_dates(["1700000000123-0", "1700000000124-17"]) == [1700000000123, 1700000000124]


def test_a_vector_id_gives_its_largest_milliseconds() -> None:
    vector = encode_vector([(1700000000000, 0), (0, 0), (1700000000002, 5)])
    assert vector == "3_1700000000000-0_0-0_1700000000002-5"
    ids = [
        vector,
        "2_1700000000005-1_1700000000001-9",
        "1_1700000000007-0",
        encode_vector([(1_700_000_000_000 + p, p) for p in range(128)]),
    ]
    assert event_dates(ids) == [1700000000002, 1700000000005, 1700000000007, 1700000000127]


def test_ids_without_a_time_give_now() -> None:
    before = int(time.time() * 1000)
    # nothing received yet in any partition, no id, a time no Date can hold
    dates = event_dates(["4_0-0_0-0_0-0_0-0", "", "0-0", "99999999999999999999-0", "junk"])
    after = int(time.time() * 1000)
    assert all(before - 5 <= ms <= after + 5 for ms in dates), dates
