"""The browser front end: a static page (``static/``) served at ``/``, plus the vendored API-docs assets.

Nothing here needs a build step or the network: ``index.html``, ``app.js`` and
``style.css`` are hand-written, and ``static/vendor/`` holds Swagger UI and
ReDoc as published on npm, with their licences (see ``static/vendor/README.md``).
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
