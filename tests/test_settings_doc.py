"""``docs/settings.md`` is generated from :class:`app.config.Settings`, and the committed page is what it renders.

The settings module is the one source of each setting's default, bounds and meaning, grouped by
concern (:data:`app.config.SETTING_GROUPS`); ``python -m app.cli.settings_doc`` writes the page.
These tests hold the page to the code, and the code's descriptions to what the page needs.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from app.cli import settings_doc
from app.cli.settings_doc import COMMAND, PAGE, default_text, settings_markdown, stale_diff
from app.config import SETTING_GROUPS, Settings

MEASURED = re.compile(r"\d\s*(ms|µs|req/s|requests/s|frames/s|images/s)\b")  # figures belong in docs/benchmarks.md


def test_the_committed_page_is_the_generated_one() -> None:
    diff = stale_diff()
    assert not diff, f"docs/settings.md differs from app/config.py; regenerate it with `{COMMAND}`:\n{diff}"


def test_every_setting_is_in_exactly_one_group() -> None:
    counts = Counter(name for group in SETTING_GROUPS for name in group.fields)
    assert not set(Settings.model_fields) - set(counts), "settings in no group of SETTING_GROUPS"
    assert not set(counts) - set(Settings.model_fields), "SETTING_GROUPS names fields that do not exist"
    assert [name for name, n in counts.items() if n > 1] == [], "settings in more than one group"
    assert len({g.title for g in SETTING_GROUPS}) == len(SETTING_GROUPS), "two groups share a title"
    assert all(g.fields and g.about.strip() for g in SETTING_GROUPS), "a group with no fields or no intro"


def test_the_fields_follow_their_groups_in_the_class() -> None:
    """app/config.py reads by concern: each group's fields sit together, in the groups' order."""
    assert list(Settings.model_fields) == [name for group in SETTING_GROUPS for name in group.fields]


def test_every_setting_has_a_description_the_page_can_hold() -> None:
    for name, field in Settings.model_fields.items():
        text = (field.description or "").strip()
        assert text, f"SR_{name.upper()} has no description"
        assert "\n" not in text, f"SR_{name.upper()}: a description is one table cell, one line"
        assert not MEASURED.search(text), (
            f"SR_{name.upper()}: a measured figure ({MEASURED.search(text)[0]!r}) belongs in docs/benchmarks.md, "
            "with its date and command; the description says why and may link there")


def test_every_setting_and_its_default_are_on_the_page() -> None:
    page = settings_markdown()
    for name, field in Settings.model_fields.items():
        row = f"| `SR_{name.upper()}` | {default_text(name, field)} |"
        assert page.count(row) == 1, row


def test_path_defaults_are_described_not_this_machines_paths() -> None:
    assert default_text("model_store", Settings.model_fields["model_store"]) == "`model_store/` of this repository"
    assert default_text("jobs_dir", Settings.model_fields["jobs_dir"]) == "`<tmp>/espcn-jobs`"


def test_the_command_writes_the_page_and_check_reports_a_stale_one(tmp_path: Path, capsys) -> None:
    page = tmp_path / "settings.md"
    page.write_text("# Settings\n\nstale\n")
    assert settings_doc.main(["--check"], page=page) == 1
    assert "+## Model" in capsys.readouterr().out  # the diff shows what regenerating would add
    assert settings_doc.main([], page=page) == 0
    assert page.read_text() == settings_markdown()
    assert settings_doc.main(["--check"], page=page) == 0
    assert PAGE.name == "settings.md" and PAGE.parent.name == "docs"
