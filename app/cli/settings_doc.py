"""``docs/settings.md``, generated from :class:`app.config.Settings`: one source for every setting.

Each setting's row comes from its field: the name (``SR_<NAME>``), the default, the values its
type and bounds allow, and its description; the headings and their order from
:data:`app.config.SETTING_GROUPS`. Only the page's frame (intro, the notes at the end) is written
here. ``tests/test_settings_doc.py`` fails when the committed page differs from what this renders.

    python -m app.cli.settings_doc           # write docs/settings.md
    python -m app.cli.settings_doc --check   # exit 1, with a diff, when docs/settings.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
import types
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from app.config import SETTING_GROUPS, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "settings.md"
COMMAND = "python -m app.cli.settings_doc"

INTRO = f"""\
# Settings

[← README](../README.md)

<!-- Generated from app/config.py by `{COMMAND}`: edit the fields' descriptions there, not this page. -->

All settings are environment variables with the `SR_` prefix (pydantic-settings), read once per
process. Each one's default, bounds and meaning are defined once, in [`app/config.py`](../app/config.py),
and this page is generated from it: `{COMMAND}` rewrites it, `--check` says whether it is current,
and a test fails when the two differ. The measured figures behind the defaults are in
[docs/benchmarks.md](benchmarks.md), with their date and command.
"""

OUTRO = """\
## Launching, and outside `SR_*`

`python -m app.serve` is what `make serve`, the Dockerfile and compose run: it adds the worker count, the
per-process thread shares and the multiprocess metrics. `uvicorn app.main:app` also works (one process).

Outside `SR_*`: importing `app` sets `OMP_WAIT_POLICY=PASSIVE` unless it is already set, so PyTorch's
OpenMP threads sleep between model calls instead of spinning on the cores the codec threads and the
event loop need (measured: [benchmarks](benchmarks.md#figures-behind-the-code)).
"""

DOC_LINK = re.compile(r"\bdocs/([\w-]+)\.md(#[\w-]+)?")  # "docs/page.md#anchor" in a description
VIDEO_FRAMES = ((1280, 720), (1920, 1080), (3840, 2160), (7680, 4320))  # named rather than squared


def env_name(field: str) -> str:
    return f"SR_{field.upper()}"


def anchor(title: str) -> str:
    """GitHub's id for a heading of plain words."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _gloss(name: str, value: int | float) -> str:
    """A readable form of a large default, by the unit its name carries: 32 MiB, 4096², 4 h."""
    if name.endswith("_bytes") and value >= 1024:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and value % size == 0:
                return f"{value // size} {unit}"
    if name.endswith("_pixels") and value >= 4096:
        for width, height in VIDEO_FRAMES:
            if value == width * height:
                return f"{width}×{height}"
        side = round(value ** 0.5)
        if side * side == value:
            return f"{side}²"
    if name.endswith("_s") and value >= 600:
        if value % 3600 == 0:
            return f"{_number(value / 3600)} h"
        if value % 60 == 0:
            return f"{_number(value / 60)} min"
    return ""


def default_text(name: str, field: FieldInfo) -> str:
    """The default as the page shows it: a literal in code font, a path in words, nothing as unset or empty."""
    value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        for base, shown in ((ROOT, "`{}/` of this repository"), (Path(tempfile.gettempdir()), "`<tmp>/{}`")):
            if value.is_relative_to(base):
                return shown.format(value.relative_to(base).as_posix())
        return f"`{value}`"
    if isinstance(value, int | float):
        gloss = _gloss(name, value)
        return f"`{_number(value)}`" + (f" ({gloss})" if gloss else "")
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    limits = {key: getattr(m, key) for m in field.metadata for key in ("ge", "gt", "le", "lt", "min_length")
              if getattr(m, key, None) is not None}
    low = limits.get("ge", limits.get("gt"))
    high = limits.get("le", limits.get("lt"))
    if "ge" in limits and "le" in limits:
        return f" {_number(low)}–{_number(high)}"
    parts = [f"{'≥' if 'ge' in limits else '>'} {_number(low)}"] if low is not None else []
    parts += [f"{'≤' if 'le' in limits else '<'} {_number(high)}"] if high is not None else []
    text = (" " + ", ".join(parts)) if parts else ""
    return text + (" (not empty)" if limits.get("min_length") else "")


def _kind(annotation: object) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        kinds = " or ".join(_kind(a) for a in members)
        return kinds + (" or unset" if type(None) in typing.get_args(annotation) else "")
    return {bool: "`true`, `false`", int: "integer", float: "number", str: "text", Path: "folder"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def values_text(field: FieldInfo) -> str:
    """What the field accepts: its choices, or its type and bounds."""
    kind = _kind(field.annotation)
    return kind + (_bounds(field) if kind in ("integer", "number", "text") else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def linked(description: str) -> str:
    """``docs/page.md#anchor`` in a description → a link, relative to this page."""
    return DOC_LINK.sub(lambda m: f"[{m[1]}]({m[1]}.md{m[2] or ''})", description)


def settings_markdown() -> str:
    """The whole of ``docs/settings.md``."""
    fields = Settings.model_fields
    parts = [INTRO, " · ".join(f"[{g.title}](#{anchor(g.title)})" for g in SETTING_GROUPS) + "\n"]
    for group in SETTING_GROUPS:
        rows = [f"| `{env_name(name)}` | {default_text(name, fields[name])} | {_cell(values_text(fields[name]))} | "
                f"{_cell(linked(fields[name].description or ''))} |" for name in group.fields]
        parts.append(f"## {group.title}\n\n{group.about}\n\n| variable | default | values | meaning |\n"
                     "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    parts.append(OUTRO)
    return "\n".join(parts)


def stale_diff(page: Path = PAGE) -> str:
    """A unified diff from ``page`` to what it should say; empty when it is current."""
    current = page.read_text() if page.exists() else ""
    wanted = settings_markdown()
    if current == wanted:
        return ""
    name = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)
    return "".join(difflib.unified_diff(current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                                        f"{name} (committed)", f"{name} (generated)"))


def main(argv: list[str] | None = None, page: Path = PAGE) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write docs/settings.md from app/config.py.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff when the page is stale")
    args = parser.parse_args(argv)
    if args.check:
        diff = stale_diff(page)
        if diff:
            sys.stdout.write(diff)
            print(f"{page.name} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    page.write_text(settings_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
