"""The README stays true to the code it documents."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    defaults = Settings.load({})
    for f in fields(Settings):
        row = re.search(rf"^\| `{f.name}` \| ([^|]*) \|", README, re.M)
        assert row, f"README's configuration table lacks {f.name}"
        value = getattr(defaults, f.name)
        if f.name in ("replica", "cors_origins"):
            continue
        shown = row.group(1).strip().strip("`")
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert shown in (expected, expected.removesuffix(".0")), (f.name, shown, expected)


def test_the_readme_commands_exist() -> None:
    assert "bash scripts/demo" in README and "bash scripts/test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci
