"""``espcn-upscale``: a folder of photographs (and a corrupt file) in, every good output at ×r out, in-process and
through a live service on 127.0.0.1 with byte-identical results.

Real photographs (scikit-image), the seeded model store, the real pipeline in this process, and a real uvicorn
process serving the same store with the same ``SR_*`` settings.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.cli.benchlib.launch import start_service, stop_service
from app.cli.upscale import main, parse_args
from tests.conftest import encoded, natural
from tests.test_animation import animation, panned

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"a.png": (64, 48), "sub/b.jpg": (80, 60), "sub/deeper/c.webp": (40, 30), "d.bmp": (36, 28)}


@pytest.fixture(scope="module")
def env(seeded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same settings for the command line here and for the live service."""
    values = {
        "SR_MODEL_STORE": str(seeded_store), "SR_DEVICE": "cpu", "SR_TILE_SIZE": "32", "SR_MAX_BATCH": "8",
        "SR_MAX_DELAY_MS": "2", "SR_CODEC_THREADS": "2", "SR_WHOLE_IMAGE_MAX_PIXELS": "0", "SR_DECODE_WORKERS": "2",
        "SR_JOBS_DIR": str(tmp_path_factory.mktemp("jobs")),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        yield values


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, size in SIZES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix]
        path.write_bytes(encoded(natural(size), fmt))
    (folder / "anim.gif").write_bytes(animation(panned(4, (32, 24)), "GIF", loop=0))
    (folder / "corrupt.jpg").write_bytes(encoded(natural((64, 48)), "JPEG")[:400])
    (folder / "notes.txt").write_text("not an image, and not named like one: not picked up")
    return folder


@pytest.fixture(scope="module")
def service(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("service") / "serve.log"
    try:
        served = start_service({**env, "SR_WORKERS": "1"}, log=log, timeout_s=90)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {log.read_text(errors='replace')[-2000:]}") from None
    try:
        yield served.url
    finally:
        stop_service(served, timeout_s=30)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_with_a_corrupt_file(env: dict[str, str], photos: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(photos), "-o", str(out), "--scale", "3", "--progress"]) == 1
    captured = capsys.readouterr()
    written = files(out)
    assert sorted(written) == ["a_x3.png", "anim_x3.png", "d_x3.png", "sub/b_x3.png", "sub/deeper/c_x3.png"]
    for name, (w, h) in SIZES.items():
        stem = Path(name).with_suffix("")
        im = Image.open(io.BytesIO(written[f"{stem}_x3.png"]))
        assert (im.format, im.size) == ("PNG", (3 * w, 3 * h))
    anim = Image.open(io.BytesIO(written["anim_x3.png"]))  # an animated GIF asked for PNG: an APNG
    assert (anim.size, anim.n_frames) == ((96, 72), 4)
    assert f"failed: {photos / 'corrupt.jpg'}: " in captured.err and "(invalid_image)" in captured.err
    assert "img/s" in captured.err and "MP/s" in captured.err and "6/6" in captured.err  # the progress bar
    assert captured.out.startswith("5 upscaled, 0 skipped (output exists), 1 failed; ")
    assert "notes.txt" not in captured.err + captured.out

    # again: what exists is skipped (no work), the corrupt file is reported again
    assert main([str(photos), "-o", str(out), "--scale", "3"]) == 1
    assert capsys.readouterr().out.startswith("0 upscaled, 5 skipped (output exists), 1 failed")
    assert files(out) == written
    # --overwrite redoes them; a glob and a name pattern; exit 0 when nothing failed
    assert main([str(photos / "sub" / "**" / "*.*"), "-o", str(out), "--overwrite", "--scale", "2",
                 "--name", "x{scale}/{stem}.{ext}"]) == 0
    assert capsys.readouterr().out.startswith("2 upscaled, 0 skipped (output exists), 0 failed")
    assert Image.open(out / "x2" / "c.png").size == (80, 60)


def test_one_file_to_a_named_output_and_bad_arguments(env: dict[str, str], photos: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "big.webp"  # the extension picks the format
    assert main([str(photos / "a.png"), "-o", str(target), "--scale", "4", "--lossless"]) == 0
    im = Image.open(target)
    assert (im.format, im.size) == ("WEBP", (256, 192))
    assert main([str(photos / "a.png"), "-o", str(tmp_path / "o"), "--scale", "5"]) == 1
    assert "no model serves x5; scales served: 2, 3, 4" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 1
    assert "missing.png: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main([str(photos), "-o", str(tmp_path / "o"), "--format", "jpeg", "--lossless"])
    assert refused.value.code == 2


def test_too_large_is_reported_and_the_rest_go_on(env: dict[str, str], photos: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SR_MAX_INPUT_PIXELS", "3000")  # SR_* settings apply in-process: a.png (3,072 px) is over
    out = tmp_path / "out"
    assert main([str(photos / "a.png"), str(photos / "sub" / "deeper"), str(photos / "d.bmp"), "-o", str(out),
                 "--scale", "2"]) == 1
    captured = capsys.readouterr()
    assert "a.png: Image is 64×48 = 3,072 px" in captured.err and "(image_too_large)" in captured.err
    assert "the limit is 3,000 px" in captured.err
    assert sorted(files(out)) == ["c_x2.png", "d_x2.png"]


@pytest.mark.slow
def test_url_gives_byte_identical_outputs(env: dict[str, str], photos: Path, service: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--format", "same", "--quality", "85"], ["--format", "webp"]):
        local, remote = tmp_path / f"local{args[1]}", tmp_path / f"remote{args[1]}"
        assert main([str(photos), "-o", str(local), "--scale", "3", *args]) == 1
        local_err = capsys.readouterr().err
        assert main([str(photos), "-o", str(remote), "--scale", "3", "--url", service, *args]) == 1
        remote_err = capsys.readouterr().err
        got, want = files(remote), files(local)
        assert sorted(got) == sorted(want) and len(want) == 5
        for name in want:
            assert got[name] == want[name], name
        # the same reason for the corrupt file either way
        assert [line for line in local_err.splitlines() if "corrupt.jpg" in line] == \
            [line for line in remote_err.splitlines() if "corrupt.jpg" in line]
    same = files(tmp_path / "localsame")
    assert sorted(same) == ["a_x3.png", "anim_x3.gif", "d_x3.png", "sub/b_x3.jpg",
                            "sub/deeper/c_x3.webp"]
    assert Image.open(io.BytesIO(same["anim_x3.gif"])).n_frames == 4


@pytest.mark.slow
def test_videos_go_through_the_video_pipeline(env: dict[str, str], tmp_path: Path, service: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    av = pytest.importorskip("av")
    from app.cli.benchlib.synth_video import make_clip

    (tmp_path / "in").mkdir()
    clip = make_clip(tmp_path / "in" / "clip.mp4", 48, 32, fps=10, seconds=0.4, audio=None)
    for extra in ([], ["--url", service]):
        out = tmp_path / ("remote" if extra else "local")
        assert main([str(clip.parent), "-o", str(out), "--scale", "2", *extra]) == 0, capsys.readouterr().err
        with av.open(str(out / "clip_x2.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (96, 64)
            assert sum(1 for _ in container.decode(stream)) == 4


# -- issue 31: what the command says -------------------------------------------------------------------


def test_help_is_written_for_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", ":func:", ":class:", ":mod:", "::"):
        assert markup not in text, markup
    assert "examples:" in text and "--quiet" in text and "--json" in text and "Exit status" in text


def test_a_loading_line_then_a_bar_whose_clock_starts_after_start_up(
    env: dict[str, str], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(photos / "sub"), "-o", str(tmp_path / "out"), "--scale", "2", "--progress"]) == 0
    captured = capsys.readouterr()
    err = captured.err.replace("\r", "\n")
    assert err.index("loading models…") < err.index("2/2")  # said before the bar, which comes after start-up
    summary = re.search(r"; ([\d.]+) s after start-up \(.*\) \(start-up ([\d.]+) s\)", captured.out)
    assert summary, captured.out
    work_s = float(summary.group(1))
    bar = re.findall(r"2/2 \[(\d+):(\d+)<", err)
    assert bar, err
    minutes, seconds = map(int, bar[-1])
    assert minutes * 60 + seconds <= work_s + 1  # the bar's clock is the work's, not start-up's too


def test_quiet_prints_only_failures_and_json_prints_one_document(
    env: dict[str, str], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([str(photos / "sub"), str(photos / "corrupt.jpg"), "-o", str(out), "--scale", "2", "--quiet",
                 "--progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [captured.err.strip()]  # one line: the corrupt file
    assert "corrupt.jpg" in captured.err and "(invalid_image)" in captured.err

    assert main([str(photos / "sub"), str(photos / "a.png"), str(photos / "corrupt.jpg"), "-o", str(out),
                 "--scale", "2", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    doc = json.loads(captured.out)
    assert (doc["done"], doc["skipped"], doc["failed"]) == (1, 2, 1)
    assert doc["startup_s"] > 0 and doc["error"] is None
    outcome = {Path(f["input"]).name: f for f in doc["files"]}
    assert outcome["a.png"]["status"] == "done" and outcome["a.png"]["format"] == "png"
    assert outcome["a.png"]["output"].endswith("a_x2.png")
    assert outcome["corrupt.jpg"]["code"] == "invalid_image"
    assert {outcome["b.jpg"]["status"], outcome["c.webp"]["status"]} == {"skipped"}


def test_format_jpg_is_jpeg() -> None:
    assert parse_args(["a.png", "-o", "out", "--format", "jpg"]).format == "jpeg"
