"""Shared fixtures: a model store of seeded ESPCNs, an app on it, and real test images."""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from app.config import Settings
from app.core.espcn import ESPCN
from app.main import create_app
from app.store.registry import save_model


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """×2/×3/×4 models with fixed random weights: fast, deterministic, independent of training."""
    store = tmp_path_factory.mktemp("store")
    for scale in (2, 3, 4):
        torch.manual_seed(100 + scale)
        save_model(ESPCN(scale), store, f"seeded-x{scale}")
    return store


def make_settings(store: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "model_store": store, "device": "cpu", "tile_size": 32, "max_batch": 8, "max_delay_ms": 2.0,
        "codec_threads": 2, "whole_image_max_pixels": 0,  # tiles everywhere, unless a test asks otherwise
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def client(seeded_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(seeded_store))) as c:
        yield c


def natural(size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A real photograph (scikit-image's astronaut, public domain), resized."""
    return Image.fromarray(skdata.astronaut()).resize(size, Image.Resampling.LANCZOS)


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


EXIT_GRACE_S = 60  # after the last test, how long the interpreter may take to exit


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A worker thread left blocked must not hang the run at interpreter exit.

    Python joins every pool thread at exit; once in some 25 loaded runs the suite passed and
    then never exited (seen after tests/test_video.py::test_cancel_mid_video_leaves_no_output,
    cause not yet found). If the process is still alive ``EXIT_GRACE_S`` after the session, this
    prints every thread's stack (so the cause can be found) and exits with the session's status.
    """

    def watchdog() -> None:
        time.sleep(EXIT_GRACE_S)
        print(f"\nthe test process did not exit within {EXIT_GRACE_S} s of the session; its threads:",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(int(exitstatus))

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()

