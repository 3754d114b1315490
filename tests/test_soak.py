"""Soak (issue 15): thousands of mixed requests against ``python -m app.serve`` on 127.0.0.1, then back to baseline.

The mix and the measurement are ``scripts/soak.py``'s (good and bad uploads, GETs, uploads
cancelled mid-body, clients gone mid-batch); here a shorter run (3,000 requests, ~30 s) on the
seeded models. After it: no 5xx or unexpected status, RSS within 96 MB of the warm baseline,
threads within 4 and open files within 8, ``/readyz`` 200, and no traceback in the server's log.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from app.cli.benchlib.launch import serving

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
_spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
assert _spec is not None and _spec.loader is not None
soak_script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = soak_script  # its dataclasses look their module up
_spec.loader.exec_module(soak_script)


@pytest.mark.slow
def test_mixed_traffic_leaves_no_leak(seeded_store: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"SR_MODEL_STORE": str(seeded_store), "SR_DEVICE": "cpu", "SR_TILE_SIZE": "32", "SR_MAX_BATCH": "8",
           "SR_JOBS_DIR": str(tmp_path / "jobs")}
    with serving(soak_script.SERVER_ENV | env, log=log, timeout_s=120) as server:
        figures = soak_script.soak(server.url, server.pid, 3000, 16, warm=300, settle_s=2.0, rss_margin_mb=96)
    print(figures)
    assert figures["unexpected"] == [], figures
    assert figures["readyz"] == 200
    assert figures["rss_growth_mb"] <= 96, figures
    assert figures["after"]["threads"] <= figures["baseline"]["threads"] + 4, figures
    assert figures["after"]["open_files"] <= figures["baseline"]["open_files"] + 8, figures
    assert figures["ok"]
    kinds = {k.split(":")[0] for k in figures["by_kind"]}
    assert {"good_png", "cancel_upload", "disconnect_mid_batch", "too_large", "bad_data"} <= kinds
    assert "Traceback" not in log.read_text(errors="replace")
