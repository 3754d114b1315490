"""Every ``sr_*`` metric moves with the traffic that should move it.

Metrics are process-global, so each test scrapes ``/metrics`` before and after its traffic and
compares deltas. Every scrape is parsed with prometheus-client's own parser (it must parse).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.core.espcn import ESPCN
from app.core.tiling import plan_tiles
from app.engine.batcher import Engine
from app.engine.runner import ModelRunner
from app.main import create_app
from app.observability import metrics
from app.observability.adapters import PrometheusObserver
from app.store.registry import discover
from tests.conftest import encoded, make_settings, natural
from tests.gates import WAIT_S, gated, wait_until

TILE = 32  # make_settings' tile_size


def sample(text: str, name: str, /, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; 0.0 when there is none."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert list(text_string_to_metric_families(text))  # parses, and is not empty
    return text


def post(client: TestClient, data: bytes, scale: int | str = 3, content_type: str = "image/png"):
    return client.post("/upscale", params={"scale": scale}, files={"file": ("x.png", data, content_type)})


def delta(before: str, after: str) -> Callable[..., float]:
    def change(name: str, /, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    return change


@pytest.fixture(scope="module")
def client(seeded_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(seeded_store, max_input_pixels=120 * 120))) as c:
        yield c


# -- a successful request ----------------------------------------------------------------------


def test_success_moves_request_pixel_batch_and_stage_metrics(client: TestClient) -> None:
    w, h = 48, 40
    tiles = len(plan_tiles(h, w, TILE))
    before = scrape(client)
    r = post(client, encoded(natural((w, h))))
    assert r.status_code == 200, r.text
    after = scrape(client)
    d = delta(before, after)

    assert d("sr_requests_total", endpoint="/upscale", scale="3", status="200") == 1
    assert d("sr_request_duration_seconds_count", endpoint="/upscale") == 1
    assert d("sr_input_pixels_total", scale="3") == w * h
    assert d("sr_output_pixels_total", scale="3") == 9 * w * h

    batches = d("sr_batch_size_count")
    assert batches >= 1
    assert d("sr_batch_size_sum") == tiles
    assert d("sr_batch_fill_ratio_count") == batches
    assert d("sr_inference_duration_seconds_count", scale="3", device="cpu") == batches
    assert d("sr_queue_wait_seconds_count") == tiles

    assert d("sr_stage_duration_seconds_count", stage="decode") == 1
    assert d("sr_stage_duration_seconds_count", stage="encode") == 1
    assert d("sr_stage_duration_seconds_count", stage="queue") == tiles
    assert d("sr_stage_duration_seconds_count", stage="inference") == batches

    assert d("sr_rejected_total") == 0
    assert sample(after, "sr_queue_depth") == 0  # settled
    # scraping /metrics is not itself counted
    assert sample(after, "sr_requests_total", endpoint="/metrics") == 0


def test_model_info_and_parameters(client: TestClient, seeded_store: Path) -> None:
    text = scrape(client)
    assert sample(text, "sr_model_info", name="seeded-x3", scale="3", device="cpu") == 1
    expected = discover(seeded_store)[3].model.parameter_count()
    assert expected == ESPCN(3).parameter_count()
    assert sample(text, "sr_model_parameters", scale="3") == expected


# -- refused requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "reason", "scale_label"),
    [
        ("scale 5", 422, "bad_input", "5"),  # no model serves it: refused before the body is read
        ("no file field", 422, "bad_input", "3"),  # raised inside the route
        ("not an image", 400, "bad_input", "3"),
        ("text/plain", 415, "bad_input", "3"),
        ("over the pixel limit", 413, "too_large", "3"),
    ],
)
def test_bad_requests_are_counted_once(
    client: TestClient, kind: str, status: int, reason: str, scale_label: str
) -> None:
    before = scrape(client)
    if kind == "scale 5":
        r = post(client, encoded(natural()), scale=5)
    elif kind == "no file field":
        r = client.post("/upscale?scale=3", files={"other": ("x.png", encoded(natural()), "image/png")})
    elif kind == "not an image":
        r = post(client, b"hello, this is text and not an image")
    elif kind == "text/plain":
        r = post(client, b"abc", content_type="text/plain")
    else:
        r = post(client, encoded(Image.new("L", (121, 120))))
    assert r.status_code == status, r.text
    after = scrape(client)
    d = delta(before, after)
    assert d("sr_requests_total", endpoint="/upscale", scale=scale_label, status=str(status)) == 1
    assert d("sr_requests_total") == 1
    assert d("sr_request_duration_seconds_count", endpoint="/upscale") == 1
    assert d("sr_rejected_total", reason=reason) == 1
    assert d("sr_rejected_total") == 1  # exactly one reason, counted once
    assert d("sr_input_pixels_total") == d("sr_output_pixels_total") == 0
    assert d("sr_batch_size_count") == 0


def test_unknown_paths_share_one_endpoint_label(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/nope/123").status_code == 404
    assert client.get("/nope/456?scale=3").status_code == 404
    after = scrape(client)
    assert delta(before, after)("sr_requests_total", endpoint="unmatched", scale="", status="404") == 1
    assert delta(before, after)("sr_requests_total", endpoint="unmatched", status="404") == 2
    for family in text_string_to_metric_families(after):
        for s in family.samples:
            assert not any("/nope" in v for v in s.labels.values()), s


# -- back-pressure ------------------------------------------------------------------------------


def test_queue_depth_and_queue_full(seeded_store: Path) -> None:
    # a one-tile request is held at the (gated) model call; the next one's 4 tiles wait behind it, filling the queue
    settings = make_settings(seeded_store, max_queue_tiles=4, max_batch=64)
    tiles = len(plan_tiles(64, 64, TILE))
    assert tiles == 4 and len(plan_tiles(20, 20, TILE)) == 1
    with TestClient(create_app(settings)) as c:
        before = scrape(c)
        answers: list[int] = []
        threads = [threading.Thread(target=lambda d=d: answers.append(post(c, d).status_code))
                   for d in (encoded(natural((20, 20))), encoded(natural((64, 64))))]
        with gated(c.app.state.service.pipeline.engine, 3) as gate:
            threads[0].start()
            assert gate.entered.wait(WAIT_S), "the first request never reached the model"
            threads[1].start()
            wait_until(lambda: sample(scrape(c), "sr_queue_depth") == tiles, "sr_queue_depth at 4")
            r = post(c, encoded(natural((20, 20))))
            assert r.status_code == 503, r.text
            during = scrape(c)
        for thread in threads:
            thread.join()
        after = scrape(c)
    assert answers == [200, 200]
    d = delta(before, during)
    assert d("sr_rejected_total", reason="queue_full") == 1
    assert d("sr_rejected_total") == 1
    assert d("sr_requests_total", endpoint="/upscale", scale="3", status="503") == 1
    assert sample(during, "sr_queue_depth") == tiles
    d = delta(before, after)
    assert d("sr_requests_total", endpoint="/upscale", scale="3", status="200") == 2
    assert d("sr_queue_wait_seconds_count") == 1 + tiles
    assert sample(after, "sr_queue_depth") == 0


def test_deadline_counts_timeout_and_504(seeded_store: Path) -> None:
    settings = make_settings(seeded_store, request_timeout_s=0.2, max_batch=64, max_delay_ms=1000)
    with TestClient(create_app(settings)) as c:
        before = scrape(c)
        r = post(c, encoded(natural()))
        assert r.status_code == 504, r.text
        after = scrape(c)
    d = delta(before, after)
    assert d("sr_rejected_total", reason="timeout") == 1
    assert d("sr_rejected_total") == 1
    assert d("sr_requests_total", endpoint="/upscale", scale="3", status="504") == 1
    assert d("sr_batch_size_count") == 0  # its tiles were dropped unrun
    assert sample(after, "sr_queue_depth") == 0


# -- client gone (engine level: TestClient cannot drop a connection mid-request) ----------------


def test_cancelled_request_counts_client_gone_and_empties_the_queue() -> None:
    def rendered() -> str:
        text = metrics.render()[0].decode()
        assert list(text_string_to_metric_families(text))
        return text

    async def scenario() -> tuple[str, str, str, int, int]:
        runner = ModelRunner(ESPCN(3), torch.device("cpu"))
        engine = Engine({3: runner}, tile=TILE, max_batch=64, max_delay_s=10.0, whole_max_pixels=0,  # tiles wait
                        observer=PrometheusObserver())
        await engine.start()
        try:
            before = rendered()
            task = asyncio.create_task(engine.upscale(torch.rand(1, 40, 48), 3))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if engine.queue_depth:
                    break
            queued, waiting = engine.queue_depth, rendered()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return before, waiting, rendered(), queued, engine.queue_depth
        finally:
            await engine.close(drain_timeout_s=1.0)

    before, waiting, after, queued, left = asyncio.run(scenario())
    tiles = len(plan_tiles(40, 48, TILE))
    assert queued == tiles and sample(waiting, "sr_queue_depth") == tiles
    assert left == 0 and sample(after, "sr_queue_depth") == 0
    d = delta(before, after)
    assert d("sr_rejected_total", reason="client_gone") == 1
    assert d("sr_rejected_total") == 1
    assert d("sr_batch_size_count") == 0
