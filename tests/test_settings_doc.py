"""``docs/settings.md`` and :class:`app.config.Settings` say the same: every setting documented, every default right.

The settings module is the one source of each default; this holds the page to it, so a default
changed in code cannot leave the documentation saying the old one.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
DESCRIBED = {  # defaults the page describes in words rather than by value
    "model_store": "`model_store/` of this repository",
    "jobs_dir": "`<tmp>/espcn-jobs`",
}


def documented() -> dict[str, str]:
    """``SR_NAME`` → the default the page shows (rows may name several settings and their defaults in order)."""
    shown: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`SR_"):
            continue
        names = re.findall(r"`(SR_[A-Z0-9_]+)`", cells[0])
        values = re.findall(r"`([^`]*)`", cells[1])
        for i, name in enumerate(names):
            shown[name] = values[i] if len(names) > 1 and i < len(values) else (values[0] if values else cells[1])
            if len(names) == 1 and cells[1] in DESCRIBED.values():
                shown[name] = cells[1]
    return shown


def as_shown(name: str, value: object) -> set[str]:
    if name in DESCRIBED:
        return {DESCRIBED[name]}
    if value is None or value == "":
        return {"unset", "empty"}
    if isinstance(value, bool):
        return {"true" if value else "false"}
    if isinstance(value, float) and value.is_integer():
        return {str(int(value))}
    return {str(value)}


def test_every_setting_is_documented_with_its_default() -> None:
    shown = documented()
    missing = [f"SR_{name.upper()}" for name in Settings.model_fields if f"SR_{name.upper()}" not in shown]
    assert not missing, f"settings missing from docs/settings.md: {missing}"
    wrong = {f"SR_{name.upper()}": (field.default, shown[f"SR_{name.upper()}"])
             for name, field in Settings.model_fields.items()
             if shown[f"SR_{name.upper()}"] not in as_shown(name, field.default)}
    assert not wrong, f"defaults that docs/settings.md states wrongly (code, page): {wrong}"


def test_the_page_documents_no_setting_that_does_not_exist() -> None:
    known = {f"SR_{name.upper()}" for name in Settings.model_fields}
    assert set(documented()) - known == set()
