"""JPEG on the model's device (app/engine/jpeg.py, PixelEngine.upscale_jpeg) against the CPU path it stands in for.

Without torchvision (the normal environment) the device path is never taken and the
eligibility rules still hold: that is the fallback, tested everywhere. With
torchvision (the ``gpu`` extra; without a GPU a CUDA build runs on the CPU) its CPU
codec stands in for nvJPEG: it is libjpeg-turbo with Pillow's settings, so there the
device answers are the CPU path's bytes exactly (measured, asserted). On a GPU the
promise is the issue's: within one grey level on average.

Real pictures (scikit-image's astronaut), real seeded models, the real pipeline.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from app.core import planes
from app.engine import jpeg
from app.engine.channel import listen
from app.engine.device_server import DeviceServer
from app.engine.pixels import PixelEngine
from app.imaging.decode import decode as cpu_decode
from app.main import create_app
from app.pipeline import OutputOptions
from app.pipeline.build import build_engine, build_pipeline
from app.pipeline.observer import PipelineObserver
from tests import hostile_corpus
from tests.conftest import encoded, make_settings, natural

# torchvision 0.29 deprecates its codecs (for TorchCodec) on every call; app/engine/jpeg.py silences it once,
# but pytest restores the warning filters around each test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision.io.image")

TORCHVISION = jpeg.available()
needs_torchvision = pytest.mark.skipif(
    not TORCHVISION, reason="torchvision is not importable here: install the gpu extra to test the device codec; "
    "the fallback is tested without it")
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not (torch.cuda.is_available() and TORCHVISION and jpeg.available("cuda")),
        reason="needs a CUDA device and a CUDA build of torchvision (nvJPEG)")),
]
GREY_LEVEL = 1.0  # the issue's bound, on average over the pixels, between the device and the CPU answers
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def run(coro):
    return asyncio.run(coro)


def photo(size: tuple[int, int] = (160, 120), **params: object) -> bytes:
    return encoded(natural(size), "JPEG", quality=params.pop("quality", 92), **params)


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[jpeg.ORIENTATION] = orientation
    return tags.tobytes()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


# -- without torchvision: eligibility, and nothing else changes -------------------------------


@pytest.mark.parametrize(("params", "reason"), [
    ({}, None),
    ({"subsampling": 0}, None),  # 4:4:4
    ({"subsampling": 1}, None),  # 4:2:2
    ({"exif": exif(6)}, None),  # turned upright on the device, as decode.py turns it
    ({"icc_profile": SRGB}, None),  # pixels are never colour-converted; the answer carries what the caller passes
    ({"progressive": True}, "progressive"),
    ({"keep_rgb": True}, "RGB-coded"),  # Adobe transform 0: libjpeg reads it as RGB, nvJPEG need not
])
def test_eligibility_is_read_from_the_header(params: dict, reason: str | None) -> None:
    found = jpeg.probe(photo(**params))
    assert found.reason == reason or (reason is not None and reason in (found.reason or ""))
    if reason is None:
        assert found.eligible and jpeg.eligible(photo(**params)) is None


def test_what_nvjpeg_or_the_cpu_path_treat_differently_is_refused() -> None:
    im = natural((64, 48))
    assert "CMYK" in (jpeg.eligible(encoded(im.convert("CMYK"), "JPEG")) or "")
    assert "greyscale" in (jpeg.eligible(encoded(im.convert("L"), "JPEG")) or "")
    data = photo()
    assert "truncated" in (jpeg.eligible(data[: len(data) // 2]) or "")
    assert jpeg.eligible(encoded(im, "PNG")) == "not a JPEG"
    assert "over 19199 px" in (jpeg.eligible(data, max_pixels=160 * 120 - 1) or "")
    assert jpeg.eligible(data, max_pixels=160 * 120) is None
    padded = data[:2] + b"\xff\xfe\x00\x02" * (jpeg.MAX_SEGMENTS + 1) + data[2:]  # empty comments
    assert "marker segments" in (jpeg.eligible(padded) or "")


def test_the_hostile_jpegs_of_issue_19_are_refused_from_the_header() -> None:
    """The caller's structural checks (app.imaging.guards) come first; the probe refuses these on its own too."""
    assert jpeg.eligible(hostile_corpus.progressive_scan_bomb(side=64, repeats=200)) == "progressive JPEG"
    assert "marker segments" in (jpeg.eligible(hostile_corpus.jpeg_marker_flood()) or "")
    assert "between its markers" in (jpeg.eligible(hostile_corpus.jpeg_junk_between_markers()) or "")
    data = photo()
    frame = data.index(b"\xff\xc0")
    bomb = data[: frame + 5] + struct.pack(">HH", 50_000, 50_000) + data[frame + 9 :]  # a 2.5 Gpx header
    assert "over 16777216 px" in (jpeg.eligible(bomb, max_pixels=4096 * 4096) or "")
    assert "Pillow cannot read" in (jpeg.eligible(bomb) or "")  # past Pillow's own bomb bound
    oversized = jpeg.probe(hostile_corpus.jpeg_with_icc(hostile_corpus.icc_profile()))
    assert oversized.eligible and len(oversized.icc_profile or b"") == 2 << 20  # app.imaging.icc drops it: the
    # caller passes icc_profile=None, as the CPU path writes none


def test_the_probe_reads_orientation_profile_and_extent_as_decode_does() -> None:
    rotated = photo((160, 120), exif=exif(8), icc_profile=SRGB)
    found = jpeg.probe(rotated + b"trailing bytes, as an MPO's second picture")
    assert (found.width, found.height, found.orientation) == (120, 160, 8)
    assert found.icc_profile == SRGB == cpu_decode(rotated, 2).icc_profile
    assert found.size == len(rotated)  # only the first picture goes to the device codec
    assert jpeg.probe(photo(exif=exif(9))).orientation == 1  # exif_transpose knows no 9: left as stored


def test_icc_segments_are_spliced_as_pillow_writes_them() -> None:
    """Byte for byte, for a profile spanning three APP2 segments (Pillow does not check it is a profile)."""
    im = natural((64, 48))
    blob = bytes(range(256)) * 600  # 153,600 bytes
    assert jpeg.with_icc(encoded(im, "JPEG", quality=90), blob) == encoded(im, "JPEG", quality=90, icc_profile=blob)
    assert Image.open(io.BytesIO(jpeg.with_icc(encoded(im, "JPEG"), SRGB))).info["icc_profile"] == SRGB


@pytest.mark.skipif(TORCHVISION, reason="torchvision is importable here: this test is for environments without it")
def test_without_torchvision_the_codec_is_unavailable_and_refuses() -> None:
    assert not jpeg.available() and not jpeg.available("cuda")
    data = photo()
    assert jpeg.eligible(data) is None  # the header still reads: eligibility does not need torchvision
    with pytest.raises(jpeg.NotEligible, match="torchvision"):
        jpeg.decode(data, torch.device("cpu"))
    with pytest.raises(jpeg.NotEligible, match="torchvision"):
        jpeg.encode(torch.zeros(3, 8, 8, dtype=torch.uint8), 90)


def test_refused_uploads_keep_their_reservation_and_the_cpu_path_answers(seeded_store: Path) -> None:
    """The fallback, in every environment: a progressive JPEG always, a baseline one too where torchvision is missing."""
    uploads = [photo(progressive=True)] + ([] if TORCHVISION else [photo()])

    async def work():
        cpu = build_pipeline(make_settings(seeded_store))
        device = build_pipeline(make_settings(seeded_store, compose="tensor"))
        await cpu.start()
        await device.start()
        try:
            answers = []
            for data in uploads:
                reference = await cpu.upscale(data, 2, OutputOptions("jpeg"))
                held = device.engine.reserve(2, 120, 160)
                with pytest.raises(jpeg.NotEligible, match="progressive" if TORCHVISION else "torchvision"):
                    await device.pixels.upscale_jpeg(data, 2, quality=90, reservation=held)
                assert held.covers(2, 120, 160)  # still held, for the fallback
                fallback = await device.upscale(data, 2, OutputOptions("jpeg"), reservation=held)
                answers.append((reference.body, fallback.body))
            return answers
        finally:
            await cpu.close(5)
            await device.close(5)

    for reference, fallback in run(work()):
        assert fallback == reference


# -- with torchvision: the device codec against the CPU path ----------------------------------


@needs_torchvision
def test_torchvision_is_found_and_its_codec_works() -> None:
    assert jpeg.available() and jpeg.available(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert not jpeg.available("cuda")


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_device_decode_is_the_cpu_decode(device: str) -> None:
    """Every orientation, three samplings, a profile: the planes decode.py gives (exactly, on the CPU)."""
    cases = [photo(subsampling=s) for s in (0, 1, 2)] + [photo(exif=exif(o)) for o in range(2, 9)]
    cases.append(photo((97, 61), icc_profile=SRGB, quality=60))  # odd sides: partial MCUs
    for data in cases:
        expected = np.asarray(cpu_decode(data, 2).color).astype(np.int16)
        got = jpeg.decode(data, torch.device(device)).permute(1, 2, 0).cpu().numpy().astype(np.int16)
        assert got.shape == expected.shape
        gap = np.abs(got - expected)
        if device == "cpu":
            assert gap.max() == 0, "torchvision's libjpeg-turbo, with Pillow's settings, decodes the same pixels"
        else:
            assert gap.mean() <= GREY_LEVEL, f"nvJPEG decodes {gap.mean():.3f} grey levels from Pillow on average"


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_upscale_jpeg_answers_as_the_cpu_pipeline(seeded_store: Path, device: str) -> None:
    """The whole request: the CPU pipeline's JPEG answer, its profile kept, its picture upright, no EXIF."""
    cases = [  # (upload, scale, quality, profile the CPU path keeps)
        (photo((160, 120)), 2, 90, None),
        (photo((96, 64), icc_profile=SRGB), 3, 75, SRGB),
        (photo((120, 80), exif=exif(6), subsampling=0), 2, 95, None),
    ]

    async def work():
        cpu = build_pipeline(make_settings(seeded_store))
        dev = build_pipeline(make_settings(seeded_store, device=device, compose="tensor"))
        await cpu.start()
        await dev.start()
        try:
            answers = []
            for data, scale, quality, profile in cases:
                reference = await cpu.upscale(data, scale, OutputOptions("jpeg", quality=quality))
                body, timings = await dev.pixels.upscale_jpeg(data, scale, quality=quality, icc_profile=profile,
                                                              max_pixels=dev.limits.max_input_pixels)
                assert min(timings.decode_s, timings.model_s, timings.compose_s, timings.encode_s) >= 0
                answers.append((reference.body, body))
            return answers
        finally:
            await cpu.close(5)
            await dev.close(5)

    for (reference, body), (_, _, _, profile) in zip(run(work()), cases, strict=True):
        expected, got = Image.open(io.BytesIO(reference)), Image.open(io.BytesIO(body))
        assert got.size == expected.size and got.mode == expected.mode == "RGB"
        assert got.info.get("icc_profile") == expected.info.get("icc_profile") == profile
        assert "exif" not in got.info and "exif" not in expected.info
        gap = np.abs(pixels(body) - pixels(reference))
        assert gap.mean() <= GREY_LEVEL, f"{gap.mean():.3f} grey levels from the CPU answer on average"
        if device == "cpu":
            assert body == reference, "torchvision's libjpeg-turbo, with Pillow's settings, writes the same bytes"


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_batches_answer_as_single_calls_and_refuse_one_by_one(device: str) -> None:
    dev = torch.device(device)
    good, turned = photo(), photo((64, 48), exif=exif(3))
    decoded = jpeg.decode_batch([good, photo(progressive=True), turned, good[:-200]], dev)
    assert [type(d).__name__ for d in decoded] == ["Tensor", "NotEligible", "Tensor", "NotEligible"]
    planes = [decoded[0], decoded[2]]
    together = jpeg.encode_batch(planes, 80, [SRGB, None])
    alone = [jpeg.encode(planes[0], 80, SRGB), jpeg.encode(planes[1], 80)]
    if dev.type == "cpu":  # libjpeg-turbo: the same pixels and bytes however called
        assert torch.equal(decoded[0], jpeg.decode(good, dev)) and torch.equal(decoded[2], jpeg.decode(turned, dev))
        assert together == alone
    else:  # nvJPEG's batched calls may take another decoder (a hardware one): the GPU's bound, one grey level
        for got, want in [(decoded[0], jpeg.decode(good, dev)), (decoded[2], jpeg.decode(turned, dev))]:
            assert (got.float() - want.float()).abs().mean() <= GREY_LEVEL
        for got, want in zip(together, alone, strict=True):
            assert np.abs(pixels(got) - pixels(want)).mean() <= GREY_LEVEL
    with pytest.raises(ValueError, match="quality"):
        jpeg.encode(planes[0], 0)


# -- the request path: SR_DEVICE_JPEG, in-process and through the device process -------------


class Codecs(PipelineObserver):
    """Which codec answered each JPEG → JPEG request (the pipeline's own report, as the metrics get it)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def jpeg_codec(self, codec: str) -> None:
        self.seen.append(codec)


def test_the_setting_resolves_to_what_the_device_can_do() -> None:
    cpu = torch.device("cpu")
    assert not jpeg.enabled("off", cpu) and not jpeg.enabled("auto", cpu)  # auto: CUDA only
    assert jpeg.enabled("on", cpu) == TORCHVISION


def test_without_torchvision_the_setting_changes_nothing(seeded_store: Path) -> None:
    """``SR_DEVICE_JPEG=on`` where the codec does not work: no device path, the same answers as ``off``."""
    uploads = [photo(), photo((96, 64), icc_profile=SRGB, exif=exif(6))]

    async def work():
        on = build_pipeline(make_settings(seeded_store, device_jpeg="on", compose="tensor"))
        off = build_pipeline(make_settings(seeded_store, device_jpeg="off"))
        await on.start()
        await off.start()
        try:
            assert (on.device_jpeg is not None) == TORCHVISION and off.device_jpeg is None
            return [((await on.upscale(d, 2, OutputOptions("jpeg"))).body,
                     (await off.upscale(d, 2, OutputOptions("jpeg"))).body) for d in uploads]
        finally:
            await on.close(5)
            await off.close(5)

    for got, expected in run(work()):
        assert got == expected


def test_jpeg_requests_through_the_device_process_answer_as_pillow(seeded_store: Path, tmp_path: Path) -> None:
    """A real device server on a socket, its PixelEngine told it does JPEG, and a worker pipeline connected to it.

    With torchvision the device decodes and encodes the baseline uploads (its libjpeg-turbo: Pillow's bytes);
    without it the device refuses each one (``NotEligible`` over the wire), and the worker takes its queue
    room again and answers with Pillow. The progressive upload never leaves the worker (its header says
    no). Either way every answer is the CPU pipeline's bytes, and no queue room is left held.
    """
    uploads = [  # (upload, scale, options)
        (photo((160, 120)), 2, OutputOptions("jpeg")),
        (photo((128, 96), icc_profile=SRGB, exif=exif(6)), 3, OutputOptions("same", quality=75)),
        (photo((160, 120), progressive=True), 2, OutputOptions("jpeg")),
        (photo((96, 64)), 2, OutputOptions("jpeg")),  # under SR_GPU_COMPOSE_MIN_PIXELS: this CPU's, as its compose
    ]
    settings = make_settings(seeded_store, device_jpeg="on", device="cpu", gpu_compose_min_pixels=10_000)
    cpu = torch.device("cpu")
    socket_path = str(tmp_path / "device.sock")

    async def work():
        _, engine = build_engine(settings, cpu)
        device_pixels = PixelEngine(engine, cpu, ThreadPoolExecutor(2), jpeg=True)
        server = DeviceServer(device_pixels, "cpu")
        await engine.start()
        accepting = asyncio.create_task(server.serve(listen(socket_path)))
        codecs = Codecs()
        worker = build_pipeline(settings.model_copy(update={"device_socket": socket_path}), observer=codecs)
        reference = build_pipeline(make_settings(seeded_store, device_jpeg="off"))
        await worker.start()
        await reference.start()
        try:
            deadline = time.monotonic() + 30
            while not worker.ready:
                assert time.monotonic() < deadline, "the worker never connected to the device server"
                await asyncio.sleep(0.01)
            assert worker.device_jpeg is worker.engine and worker.device_jpeg.jpeg_ready
            answers = [((await worker.upscale(d, s, o)).body, (await reference.upscale(d, s, o)).body)
                       for d, s, o in uploads]
            assert worker.engine._reserved == 0 and engine.queue_depth == 0
            return answers, codecs.seen
        finally:
            await worker.close(5)
            await reference.close(5)
            accepting.cancel()
            await server.drain(5)

    answers, seen = run(work())
    for got, expected in answers:
        assert got == expected
    assert seen == (["device", "device", "pillow", "pillow"] if TORCHVISION else ["pillow"] * 4)


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_post_upscale_takes_the_device_path_and_counts_it(seeded_store: Path, device: str) -> None:
    """Over HTTP, in-process (``SR_DEVICE_JPEG=on``; on CUDA what ``auto`` gives): Pillow's answer (its bytes on
    the CPU, within a grey level on a GPU, upright, the profile kept), the stages timed, and
    ``sr_jpeg_codec_total`` counting the device answers and the fallback."""
    on = make_settings(seeded_store, device_jpeg="on", device=device, gpu_compose_min_pixels=0)
    off = make_settings(seeded_store, device_jpeg="off")

    def counted(client: TestClient, codec: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'sr_jpeg_codec_total{{codec="{codec}"}}'):
                return float(line.split()[-1])
        return 0.0

    def post(client: TestClient, data: bytes, fmt: str) -> httpx.Response:
        return client.post("/upscale", params={"scale": 2, "format": fmt}, files={"file": ("x.jpg", data, "image/jpeg")})

    with TestClient(create_app(on)) as client, TestClient(create_app(off)) as pillow:
        before = counted(client, "device"), counted(client, "pillow")
        for data in (photo(), photo((90, 70), exif=exif(8), icc_profile=SRGB)):
            for fmt in ("jpeg", "same"):
                r, expected = post(client, data, fmt), post(pillow, data, fmt).content
                assert r.status_code == 200
                if device == "cpu":
                    assert r.content == expected
                got, want = Image.open(io.BytesIO(r.content)), Image.open(io.BytesIO(expected))
                assert got.size == want.size and got.info.get("icc_profile") == want.info.get("icc_profile")
                assert np.abs(pixels(r.content) - pixels(expected)).mean() <= GREY_LEVEL
                assert {"decode", "model", "compose", "encode"} <= {
                    part.split(";")[0].strip() for part in r.headers["server-timing"].split(",")}
        progressive = photo(progressive=True)
        assert post(client, progressive, "jpeg").content == post(pillow, progressive, "jpeg").content
        png = post(client, photo(), "png")  # a PNG answer is Pillow's business: not counted
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert (counted(client, "device") - before[0], counted(client, "pillow") - before[1]) == (4, 1)


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_answers_encoded_together_are_each_encoded_alone_and_a_bad_one_fails_alone(device: str) -> None:
    """PixelEngine._encode_jpegs, the batch for answers back from the model together: same-size ones compose as one
    stack, each quality is one encode call, a profile stays with its answer, and a bad answer fails on its own."""
    gen = torch.Generator().manual_seed(5)
    frames = [jpeg.decode(photo((64, 48), quality=q), torch.device(device)) for q in (70, 80, 90)]
    other = jpeg.decode(photo((40, 32)), torch.device(device))
    lumas = [torch.rand((1, 3 * c.shape[1], 3 * c.shape[2]), generator=gen).to(device) for c in [*frames, other]]
    answers = [(c, y, 3, quality, profile) for c, y, quality, profile in
               zip([*frames, other], lumas, (90, 75, 90, 90), (None, None, SRGB, None), strict=True)]
    alone = [jpeg.encode(planes.compose(c, None, y, s), q, icc) for c, y, s, q, icc in answers]
    bad = (frames[0], lumas[3], 3, 90, None)  # another picture's luma
    for batch in (answers, [*answers, bad]):  # stacked, then redone one by one around the bad one
        results = PixelEngine._encode_jpegs(batch)
        for (body, _), want in zip(results[: len(answers)], alone, strict=True):
            if device == "cpu":
                assert body == want
            else:  # nvJPEG may encode a batch with another path than one picture
                assert np.abs(pixels(body) - pixels(want)).mean() <= GREY_LEVEL
        assert Image.open(io.BytesIO(results[2][0])).info.get("icc_profile") == SRGB
    assert isinstance(results[-1], ValueError)


@needs_torchvision
@pytest.mark.parametrize("device", DEVICES)
def test_uploads_that_arrive_together_decode_in_one_call_with_the_answers_of_single_calls(
    seeded_store: Path, device: str
) -> None:
    """Group commit (app/engine/group_call.py): concurrent uploads share one device decode call, a progressive one
    among them is refused alone, and every answer is the one its upload gets on its own."""
    uploads = [photo((80 + 8 * i, 60 + 4 * i)) for i in range(6)] + [photo((80, 60), progressive=True)]

    async def work():
        dev = build_pipeline(make_settings(seeded_store, device=device, compose="tensor", device_jpeg="on"))
        await dev.start()
        try:
            alone = [(await dev.pixels.upscale_jpeg(d, 2, quality=90))[0] for d in uploads[:-1]]
            before = dev.pixels.jpeg_decodes.batches
            together = await asyncio.gather(*(dev.pixels.upscale_jpeg(d, 2, quality=90) for d in uploads),
                                            return_exceptions=True)
            return alone, together, dev.pixels.jpeg_decodes.batches - before
        finally:
            await dev.close(5)

    alone, together, batches = run(work())
    assert batches == 1
    for (body, _), single in zip(together[:-1], alone, strict=True):
        if device == "cpu":
            assert body == single
        else:  # nvJPEG may take another decoder for a batch than for one picture
            assert np.abs(pixels(body) - pixels(single)).mean() <= GREY_LEVEL
    assert isinstance(together[-1], jpeg.NotEligible) and "progressive" in together[-1].reason


@needs_torchvision
@pytest.mark.parametrize("device", [p for p in DEVICES if p.id == "cuda"])
def test_device_decodes_never_write_memory_that_queued_kernels_still_read(device: str) -> None:
    """pytorch/vision#9606: torchvision allocates nvJPEG's outputs on the current stream and writes them from
    another, so blocks freed while kernels queued on the current stream still read them could be overwritten.
    Blocks the size of a decoded picture are freed behind a long kernel, then pictures are decoded: every sum
    queued before the decode must come out exact (``_nvjpeg_streams`` gives the decoder a stream of its own)."""
    dev = torch.device(device)
    data = photo((640, 360), quality=85)
    elements = 3 * 640 * 360 // 4  # float32 blocks of one decoded picture's size: the allocator's first pick
    corrupted = 0
    for _ in range(20):
        blocks = [torch.full((elements,), float(k), device=dev) for k in range(8)]
        torch.cuda.synchronize(dev)
        torch.cuda._sleep(20_000_000)  # a long kernel first, so the sums below are still queued at the decode
        sums = [b.sum() for b in blocks]
        del blocks
        jpeg.decode_batch([data] * 4, dev)
        torch.cuda.synchronize(dev)
        corrupted += sum(float(s) != k * elements for k, s in enumerate(sums))
    assert corrupted == 0
