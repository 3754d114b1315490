"""One error shape everywhere (issue 31): ``detail`` a sentence, ``code`` a word, ``errors`` per field, all at once.

Also the access line each request leaves on the ``app.access`` logger.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.errors import CODES
from app.main import create_app
from tests.conftest import encoded, make_settings, natural, open_bytes

ROOT = Path(__file__).resolve().parents[1]


def shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"].endswith("."), body
    assert body["code"] == code, body
    assert set(body) <= {"detail", "code", "errors"}
    return body


def locs(body: dict) -> list[list]:
    return [e["loc"] for e in body.get("errors", [])]


def test_a_malformed_query_answers_a_sentence_not_pydantics_list(client: TestClient) -> None:
    png = encoded(natural())
    body = shape(client.post("/upscale", params={"scale": "x3"}, files={"file": ("a.png", png, "image/png")}),
                 422, "invalid_parameters")
    assert "Query parameter 'scale'" in body["detail"] and "'x3'" in body["detail"]
    assert body["errors"] == [{"loc": ["query", "scale"], "msg": body["errors"][0]["msg"], "type": "int_parsing"}]


def test_a_misnamed_field_and_a_missing_scale_are_reported_together(client: TestClient) -> None:
    png = encoded(natural())
    body = shape(client.post("/upscale", files={"image": ("a.png", png, "image/png")}), 422, "invalid_parameters")
    assert locs(body) == [["query", "scale"], ["body", "file"]]
    assert "2 problems" in body["detail"] and "'image'" in body["detail"]


def test_a_misnamed_field_alone_names_the_field_it_found(client: TestClient) -> None:
    body = shape(client.post("/upscale", params={"scale": 3}, files={"image": ("a.png", encoded(natural()), "image/png")}),
                 422, "missing_image")
    assert "'file'" in body["detail"] and "'image'" in body["detail"]
    assert locs(body) == [["body", "file"]]


def test_every_query_problem_at_once(client: TestClient) -> None:
    png = encoded(natural())
    r = client.post("/upscale?scale=5&scale=5&format=png&quality=80&fromat=jpeg",
                    files={"file": ("a.png", png, "image/png")})
    body = shape(r, 422, "invalid_parameters")
    assert sorted(map(tuple, locs(body))) == [("query", "format"), ("query", "fromat"), ("query", "scale"),
                                              ("query", "scale")]
    kinds = sorted(e["type"] for e in body["errors"])
    assert kinds == ["incoherent", "repeated", "unknown", "unknown_scale"]


def test_an_unknown_scale_alone_keeps_its_code(client: TestClient) -> None:
    body = shape(client.post("/upscale", params={"scale": 5}, files={"file": ("a.png", encoded(natural()), "image/png")}),
                 422, "unknown_scale")
    assert "2, 3, 4" in body["detail"]


def test_an_empty_post_with_a_bad_query_says_both(client: TestClient) -> None:
    body = shape(client.post("/upscale", params={"scale": "three"}), 422, "invalid_parameters")
    assert locs(body) == [["query", "scale"], ["body", "file"]]


@pytest.mark.parametrize(("spelling", "magic"), [("jpg", b"\xff\xd8\xff"), ("jpeg", b"\xff\xd8\xff")])
def test_format_jpg_is_jpeg(client: TestClient, spelling: str, magic: bytes) -> None:
    r = client.post("/upscale", params={"scale": 2, "format": spelling, "quality": 80},
                    files={"file": ("a.png", encoded(natural()), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content.startswith(magic)
    assert open_bytes(r.content).size == (96, 80)


def test_not_found_and_other_errors_share_the_shape(client: TestClient) -> None:
    shape(client.get("/nowhere"), 404, "not_found")
    shape(client.post("/upscale", params={"scale": 3}, content=b"not an image", headers={"content-type": "image/png"}),
          400, "invalid_image")


def test_the_openapi_error_schema_is_a_sentence_with_field_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "errors" in schema["ErrorBody"]["properties"]
    text = [p for p in client.get("/openapi.json").json()["paths"]["/upscale"]["post"]["parameters"]
            if p["name"] == "format"][0]["description"]
    assert "GIF → GIF" in text and "PNG for any other input" not in text


def test_the_api_docs_table_lists_every_code() -> None:
    doc = (ROOT / "docs" / "api.md").read_text()  # the README links it
    listed = set(re.findall(r"^\| `([a-z_]+)` \| ", doc, re.MULTILINE))
    assert set(CODES) <= listed, sorted(set(CODES) - listed)


# -- the access line -------------------------------------------------------------------------------


def test_each_request_leaves_one_access_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        r = client.post("/upscale", params={"scale": 3}, files={"file": ("a.png", encoded(natural()), "image/png")},
                        headers={"x-request-id": "req-42"})
        bad = client.post("/upscale", params={"scale": "x"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    assert re.fullmatch(r"[0-9a-f]{12}", bad.headers["x-request-id"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "app.access"]
    good = [line for line in lines if line.startswith("req-42 ")]
    assert len(good) == 1, lines
    assert re.fullmatch(r"req-42 POST /upscale 200 scale=3 in=48×40 out=144×120 bytes=\d+ decode=[\d.]+ "
                        r"model=[\d.]+ compose=[\d.]+ encode=[\d.]+ total=[\d.]+ms", good[0]), good[0]
    assert any(line.startswith(bad.headers["x-request-id"]) and " 422 " in line for line in lines)


def test_the_access_line_can_be_switched_off(seeded_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(make_settings(seeded_store, request_log=False))) as c, \
            caplog.at_level(logging.INFO, logger="app.access"):
        assert c.get("/models").status_code == 200
    assert not [rec for rec in caplog.records if rec.name == "app.access"]
