"""``python -m app.cli.bench --quick`` end to end on a seeded model: files written, every path timed and exact.

A smoke run only (one tiny frame, one repeat, one second of load): it checks the tool works, never the numbers.
Needs neither ../shared nor cv2 (the OpenCV peers are skipped without ``--opencv``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from app.cli.bench import main
from app.cli.benchlib.model_paths import PATHS
from app.core.espcn import ESPCN
from app.store.registry import save_model


@pytest.mark.slow  # servers started and loaded for seconds each
def test_quick_bench_writes_every_row(tmp_path, capsys):
    store = tmp_path / "store"
    torch.manual_seed(0)
    save_model(ESPCN(3), store, "seeded-x3")
    out = tmp_path / "out"

    main(["--quick", "--scales", "3", "--sizes", "32x24", "--repeats", "1", "--duration", "1", "--workers", "1",
          "--clients", "3", "--many-clients", "4", "--frame-clients", "2", "--out", str(out), "--store", str(store)])

    assert (out / "bench.md").is_file() and (out / "bench.json").is_file()
    assert "## Model only" in capsys.readouterr().out
    data = json.loads((out / "bench.json").read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu"]

    ours = {r["method"]: r for r in data["frames"] if r["kind"] == "ours"}
    assert set(ours) == set(PATHS)
    for method, row in ours.items():
        assert (row["scale"], row["width"], row["height"]) == (3, 32, 24)
        if method == "compile":  # --quick leaves torch.compile out (it takes tens of seconds)
            assert row["status"] in ("skipped", "n/a") and row["note"]
            continue
        assert row["status"] == "ok", row
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
        assert row["max_abs_diff"] <= 1e-4, row

    bicubic = [r for r in data["frames"] if r["method"] == "pillow_bicubic"]
    assert bicubic and math.isfinite(bicubic[0]["median_ms"])
    (limit,) = data["limits"]
    assert limit["limit_ms"] > 0 and limit["pct_of_limit"] > 0

    assert {r["format"] for r in data["requests"]} == {"JPEG → JPEG", "PNG → PNG (level 1)"}
    assert all(math.isfinite(r["median_ms"]) and r["workers"] == 1 for r in data["requests"])
    assert len(data["codecs"]) == 6
    # the JPEG frames, the two small-PNG loads (auto max_batch: 8 on CPU), then batching off
    assert [(t["clients"], t["max_batch"]) for t in data["throughput"]] == [(2, 8), (3, 8), (4, 8), (3, 1)]
    assert "JPEG" in data["throughput"][0]["load"] and "96² PNG" in data["throughput"][1]["load"]
    for t in data["throughput"]:
        assert t["ok"] > 0 and t["errors"] == 0 and t["req_per_s"] > 0 and t["bare_batched_images_per_s"] > 0
        assert t["bare_best_batch"] in (1, 2, 4, 8, 16, 32)
        assert t["bare_batched_images_per_s"] >= t["bare_same_batch_images_per_s"]  # the best over all sizes
        assert t["client_cpu_ms_per_request"] > 0 and t["gpu_utilisation_pct"] is None  # no GPU here
        if "PNG" in t["load"]:
            assert t["bare_cpu_ms_per_image"] > 0
        if Path("/proc/self/stat").is_file():  # the server's CPU time is read from /proc (all its processes)
            assert t["server_cpu_ms_per_request"] > 0 and t["cores_busy"] > 0
