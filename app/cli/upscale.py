"""``espcn-upscale`` (``python -m app.cli.upscale``): upscale files and folders on the service's own pipeline.

Examples::

    espcn-upscale photos/ -o photos_x3/                  # every image under photos/, ×3, PNG
    espcn-upscale 'shots/*.jpg' --scale 2 --format same -o out/
    espcn-upscale cat.gif -o cat_x4.gif --scale 4 --format same   # one input: -o may name the file
    espcn-upscale clips/ -o out/ --video-format webm     # videos go through the video pipeline
    espcn-upscale photos/ -o out/ --url http://127.0.0.1:8000     # let a running service do the work

In-process it builds the same pipeline as the service (:func:`app.pipeline.build.build_pipeline`
from ``SR_*`` settings: model store, device, backend, limits) and keeps ``--jobs`` files
in flight, so tiles of several files share the engine's batches. ``--url`` sends each
file to ``POST /upscale`` (videos to ``POST /jobs``) instead; with the same settings on
both sides the outputs are byte-identical. Folders are searched recursively for image
(and video) extensions; files named explicitly are tried whatever their extension.
Outputs are written under ``-o`` keeping the folders' layout, named by ``--name``
(``{stem}``, ``{scale}``, ``{ext}``, ``{format}``), written whole or not at all; existing
outputs are skipped unless ``--overwrite``. A bad file (corrupt, too large, not an
image) is reported with the reason and the rest go on; the exit status is 1 if any
file failed, else 0, with a summary line either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from app.imaging.animation import ANIMATED_FORMATS, animated_output
from app.imaging.encode import format_like

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif", ".tif",
                              ".tiff", ".mpo", ".apng"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv",
                              ".flv", ".3gp", ".ogv"})
FORMAT_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif", "mp4": "mp4", "webm": "webm"}
MEDIA_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif",
                 "video/mp4": "mp4", "video/webm": "webm"}
DEFAULT_NAME = "{stem}_x{scale}.{ext}"
RETRY_FOR_S = 600.0  # how long a file waits for room in a full queue before it counts as failed
_GLOB_CHARS = frozenset("*?[")
_FORMAT_OF_NAME = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "same"}

# What --help prints: plain text for a terminal (the module docstring above is for the code's readers).
DESCRIPTION = """\
Upscale images and videos with the ESPCN models, on the service's own pipeline in this
process (the SR_* settings apply), or on a running service with --url.

examples:
  espcn-upscale photos/ -o photos_x3/                  every image under photos/, x3, PNG
  espcn-upscale 'shots/*.jpg' --scale 2 --format same -o out/
  espcn-upscale cat.gif -o cat_x4.gif --scale 4        one input: -o may name the output file
  espcn-upscale clips/ -o out/ --video-format webm     videos go through the video pipeline
  espcn-upscale photos/ -o out/ --url http://127.0.0.1:8000

Folders are searched recursively for image and video extensions; files named explicitly
are tried whatever their extension. Outputs keep the folders' layout under -o, are
written whole or not at all, and are skipped when they exist (unless --overwrite).
"""
EPILOG = """\
A file that cannot be upscaled (corrupt, too large, not an image) is reported with the
service's reason and code, and the others go on. Exit status: 0 when every file was
upscaled or skipped, 1 when any failed, 2 for bad arguments, 130 when interrupted."""


class FileFailed(Exception):
    """One file could not be upscaled: ``detail`` says why, ``code`` is the service's error code."""

    def __init__(self, detail: str, code: str = "failed") -> None:
        super().__init__(detail)
        self.detail, self.code = detail, code


@dataclass(frozen=True)
class Item:
    src: Path
    rel_dir: Path  # where under the output folder (the input folder's layout)
    video: bool
    dst: Path | None = None  # the output file itself (one input, -o naming a file)


@dataclass
class Tally:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    output_pixels: int = 0
    started: float = 0.0  # perf_counter once the pipeline (or the service) was ready
    startup_s: float = 0.0  # how long the models took to load (or the service to answer)
    failures: list[str] = field(default_factory=list)
    files: list[dict[str, object]] = field(default_factory=list)  # one entry per input, for --json


class Console:
    """Everything the command tells a person: the start-up line, the bar, failures and the summary.

    ``--quiet`` keeps only the failures; ``--json`` keeps nothing on the terminal (stdout gets one
    JSON document at the end). The bar is made only once start-up is over, so its clock and
    its rates count the work alone.
    """

    def __init__(self, progress: bool, quiet: bool, as_json: bool) -> None:
        self.progress, self.quiet, self.as_json = progress and not quiet and not as_json, quiet, as_json
        self.bar: tqdm | None = None

    def say(self, text: str) -> None:
        if not (self.quiet or self.as_json):
            self._write(text)

    def failure(self, text: str) -> None:
        if not self.as_json:
            self._write(text)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_bar(self, total: int, initial: int) -> None:
        if self.progress:
            self.bar = tqdm(total=total, initial=initial, unit="img", file=sys.stderr, dynamic_ncols=True)

    def advance(self, postfix: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- the command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="espcn-upscale", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image or video files, folders (searched recursively) or globs")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (created); with one input file, a file name with an image extension")
    p.add_argument("--scale", type=int, default=3, help="upscaling factor: one the models serve (default 3)")
    p.add_argument("--format", choices=("png", "jpeg", "jpg", "webp", "same"), default=None,
                   help="output format; same: JPEG → JPEG, WebP → WebP, animated GIF → GIF, else PNG (default: png, "
                   "or what the extension of an output file name says)")
    p.add_argument("--quality", type=int, choices=range(1, 101), metavar="1..100", help="JPEG/WebP quality (default 90)")
    p.add_argument("--lossless", action="store_true", help="lossless WebP")
    p.add_argument("--video-format", choices=("mp4", "webm", "same"), default="same",
                   help="videos: mp4 (H.264), webm (VP9), same (WebM for WebM/Matroska input, else MP4)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--name", default=None,
                       help=f"output name pattern with {{stem}}, {{scale}}, {{ext}}, {{format}} (default {DEFAULT_NAME})")
    names.add_argument("--suffix", default=None, help="shorthand for --name '{stem}SUFFIX.{ext}' (e.g. _big)")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    exists.add_argument("--skip-existing", dest="overwrite", action="store_false",
                        help="leave outputs that exist alone (the default)")
    p.add_argument("--url", help="a running service (http://host:port) to send the files to, instead of in-process")
    p.add_argument("--api-key", default=os.environ.get("ESPCN_API_KEY"),
                   help="--url: the service's API key, sent as a Bearer token (default: $ESPCN_API_KEY)")
    p.add_argument("--jobs", type=int, default=4, help="files in flight at once (default 4)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="print only the files that failed")
    talk.add_argument("--json", action="store_true",
                      help="print one JSON document on stdout at the end (counts, timings, each file's outcome) "
                      "and nothing else")
    p.add_argument("--timeout", type=float, default=600.0, help="--url: seconds to wait for one file's answer")
    args = p.parse_args(argv)
    if args.format == "jpg":
        args.format = "jpeg"
    if args.format is None:
        args.format = _FORMAT_OF_NAME.get(args.output.suffix.lower(), "png") if not args.output.is_dir() else "png"
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.lossless and args.format == "jpeg":
        p.error("JPEG cannot be lossless: use --format webp or png")
    args.pattern = args.name or ("{stem}" + args.suffix + ".{ext}" if args.suffix is not None else DEFAULT_NAME)
    try:
        args.pattern.format(stem="a", scale=2, ext="png", format="png")
    except (KeyError, IndexError, ValueError) as e:
        p.error(f"bad --name pattern {args.pattern!r}: {e}")
    return args


def collect(inputs: list[str], output: Path) -> tuple[list[Item], list[str]]:
    """Files, folders (recursively, by extension) and globs → items; what named nothing is returned apart."""
    items: list[Item] = []
    missing: list[str] = []
    seen: set[Path] = set()
    out_root = output.resolve()

    def add(path: Path, rel_dir: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(Item(path, rel_dir, path.suffix.lower() in VIDEO_EXTENSIONS))

    for raw in inputs:
        path = Path(raw)
        matches = [Path(m) for m in sorted(glob.glob(raw, recursive=True))] if not path.exists() and \
            _GLOB_CHARS & set(raw) else [path]
        if not matches or not matches[0].exists():
            missing.append(raw)
            continue
        for match in matches:
            if match.is_dir():
                for found in sorted(match.rglob("*")):
                    suffix = found.suffix.lower()
                    if found.is_file() and (suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS) \
                            and out_root not in found.resolve().parents:  # never our own outputs
                        add(found, found.parent.relative_to(match))
            elif match.is_file():
                add(match, Path())
    return items, missing


def output_path(item: Item, output: Path, pattern: str, scale: int, fmt: str) -> Path:
    if item.dst is not None:
        return item.dst
    ext = FORMAT_EXTENSIONS[fmt]
    return output / item.rel_dir / pattern.format(stem=item.src.stem, scale=scale, ext=ext, format=fmt)


def predicted_format(data: bytes, requested: str) -> str:
    """The format the pipeline will answer in (the same rules), from the header alone: for skipping and naming."""
    if requested != "same":
        return requested
    try:
        with Image.open(io.BytesIO(data)) as im:
            source, frames = im.format or "", getattr(im, "n_frames", 1)
    except Exception:  # unreadable: the pipeline will say why
        return "png"
    if frames > 1 and source in ANIMATED_FORMATS:
        return animated_output(requested, source)
    return format_like(source)


def predicted_video_format(src: Path, requested: str) -> str:
    if requested != "same":
        return requested
    return "webm" if src.suffix.lower() in (".webm", ".mkv") else "mp4"


# -- the two ways of doing the work ----------------------------------------------------------


class Local:
    """The service's pipeline in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        from app.config import Settings

        self.args = args
        self.settings = Settings()
        self.pipeline: Any = None

    async def start(self) -> None:
        from app.pipeline.build import build_pipeline

        self.pipeline = build_pipeline(self.settings)
        await self.pipeline.start()
        self.pipeline.check_scale(self.args.scale)  # UnknownScale: reported by main

    async def close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close(self.settings.drain_timeout_s)

    def check_options(self) -> None:
        from app.pipeline import OutputOptions

        self.options = OutputOptions(self.args.format, self.args.quality, self.args.lossless)

    async def image(self, data: bytes) -> tuple[bytes, str, int]:
        """Encoded image → (encoded answer, its format, output pixels counted over all frames)."""
        from app.engine.errors import QueueFull

        if len(data) > self.settings.max_body_bytes:
            raise FileFailed(f"the file is {len(data):,} bytes, over the limit of {self.settings.max_body_bytes:,} "
                             "(SR_MAX_BODY_BYTES)", "body_too_large")
        give_up = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                result = await self.pipeline.upscale(data, self.args.scale, self.options)
            except QueueFull as exc:  # our own files filled the queue: wait for room
                if time.monotonic() > give_up:
                    raise self._failed(exc) from None
                await asyncio.sleep(max(0.05, min(exc.retry_after_s, 1.0) / 4))
                continue
            except Exception as exc:
                raise self._failed(exc) from None
            w, h = result.output_size
            return result.body, result.format, w * h * getattr(result, "frames", 1)

    async def video(self, src: Path, dst: Path, fmt: str) -> tuple[str, int]:
        from app.jobs.limits import from_settings
        from app.video import VideoError, output_format, probe_video, upscale_video

        limits = from_settings(self.settings)
        try:
            info = await asyncio.to_thread(probe_video, src, self.args.scale, limits.video)
            actual = output_format(fmt, info.container)
            result = await upscale_video(self.pipeline, src, dst, self.args.scale, actual, config=limits.encoder)
        except VideoError as exc:
            from app.api.errors import sentence

            raise FileFailed(sentence(str(exc)), exc.code) from None
        except Exception as exc:
            raise self._failed(exc) from None
        return result.format, result.frames * result.width * result.height

    def _failed(self, exc: Exception) -> FileFailed:
        """The service's own wording and code for the failure (app.api.errors.classify, made a sentence as it is)."""
        from app.api.errors import classify, sentence

        try:
            api = classify(exc, 503)
        except TypeError:
            return FileFailed(f"{type(exc).__name__}: {exc}", "internal_error")
        return FileFailed(sentence(api.detail), api.code)


class Remote:
    """A running service, over HTTP."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        self.args = args
        self.base = args.url.rstrip("/")
        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(args.timeout, connect=10.0), headers=headers)
        self.params: dict[str, str] = {"scale": str(args.scale), "format": args.format}
        if args.quality is not None:
            self.params["quality"] = str(args.quality)
        if args.lossless:
            self.params["lossless"] = "true"

    async def start(self) -> None:
        import httpx

        try:
            r = await self.client.get(f"{self.base}/readyz")
        except httpx.HTTPError as exc:
            raise FileFailed(f"cannot reach the service at {self.base}: {exc}", "unreachable") from None
        if r.status_code != 200:
            raise FileFailed(f"the service at {self.base} is not ready ({r.status_code})", "not_ready")
        scales = r.json().get("scales")
        if isinstance(scales, list) and self.args.scale not in scales:
            served = ", ".join(str(s) for s in scales) or "none"
            raise FileFailed(f"no model serves x{self.args.scale}; scales served: {served}", "unknown_scale")

    async def close(self) -> None:
        await self.client.aclose()

    def check_options(self) -> None:
        """The service checks them; the command line refused the impossible ones already."""

    async def _send(self, call: Callable[[], Awaitable[Any]]) -> Any:
        import httpx

        give_up = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                r = await call()
            except httpx.HTTPError as exc:
                raise FileFailed(f"no answer from {self.base}: {type(exc).__name__} {exc}", "unreachable") from None
            if r.status_code in (429, 503) and time.monotonic() < give_up:  # queue full: as Retry-After says
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1") or 1), 5.0))
                continue
            if r.status_code >= 400:
                raise _http_failure(r)
            return r

    async def image(self, data: bytes) -> tuple[bytes, str, int]:
        r = await self._send(lambda: self.client.post(
            f"{self.base}/upscale", params=self.params, content=data,
            headers={"content-type": "application/octet-stream"}))
        fmt = MEDIA_FORMATS.get(r.headers.get("content-type", "").split(";")[0], "png")
        w, h, frames = _pixels(r.content)
        return r.content, fmt, w * h * frames

    async def video(self, src: Path, dst: Path, fmt: str) -> tuple[str, int]:
        import httpx

        data = await asyncio.to_thread(src.read_bytes)
        params = {"scale": str(self.args.scale), "format": fmt}
        r = await self._send(lambda: self.client.post(f"{self.base}/jobs", params=params, content=data,
                                                      headers={"content-type": "application/octet-stream"}))
        job = r.json()
        try:
            while True:
                status = (await self._send(lambda: self.client.get(f"{self.base}{job['status_url']}"))).json()
                if status["state"] == "done":
                    break
                if status["state"] in ("failed", "cancelled"):
                    raise FileFailed(status.get("error") or f"the job was {status['state']}",
                                     status.get("error_code") or "job_failed")
                await asyncio.sleep(0.5)
            r = await self._send(lambda: self.client.get(f"{self.base}{job['result_url']}"))
            await asyncio.to_thread(dst.write_bytes, r.content)
        finally:
            with contextlib.suppress(httpx.HTTPError):  # the service keeps nothing of ours
                await self.client.delete(f"{self.base}{job['status_url']}")
        out = status.get("info", {}).get("output", {})
        actual = MEDIA_FORMATS.get(r.headers.get("content-type", "").split(";")[0], fmt)
        return actual, int(out.get("frames", 0)) * int(out.get("width", 0)) * int(out.get("height", 0))


def _http_failure(r: Any) -> FileFailed:
    try:
        body = r.json()
        detail, code = body.get("detail", r.text), body.get("code", str(r.status_code))
    except ValueError:
        detail, code = r.text or r.reason_phrase, str(r.status_code)
    return FileFailed(detail if isinstance(detail, str) else str(detail), code)


def _pixels(body: bytes) -> tuple[int, int, int]:
    try:
        with Image.open(io.BytesIO(body)) as im:
            return im.width, im.height, getattr(im, "n_frames", 1)
    except Exception:
        return 0, 0, 1


# -- the run -------------------------------------------------------------------------------


def plan(args: argparse.Namespace, items: list[Item], tally: Tally, ui: Console) -> list[tuple[Item, Path, str]]:
    """Each item's output path and expected format; what exists already is skipped here, before any work starts."""
    todo: list[tuple[Item, Path, str]] = []
    claimed: dict[Path, Path] = {}
    for item in items:
        try:
            if item.video:
                fmt = predicted_video_format(item.src, args.video_format)
            else:  # only "same" needs the header
                fmt = predicted_format(item.src.read_bytes(), args.format) if args.format == "same" else args.format
        except OSError as exc:
            _report(tally, ui, item, f"cannot read it: {exc.strerror or exc}", "unreadable")
            continue
        dst = output_path(item, args.output, args.pattern, args.scale, fmt)
        other = claimed.setdefault(dst.resolve(), item.src)
        if other != item.src:
            _report(tally, ui, item, f"its output {dst} would also be {other}'s: use a --name pattern that keeps "
                                     "them apart", "name_clash")
        elif dst.exists() and not args.overwrite:
            tally.skipped += 1
            tally.files.append({"input": str(item.src), "output": str(dst), "status": "skipped"})
        else:
            todo.append((item, dst, fmt))
    return todo


def _report(tally: Tally, ui: Console, item: Item, detail: str, code: str) -> None:
    tally.failed += 1
    tally.failures.append(f"{item.src}: {detail} ({code})")
    tally.files.append({"input": str(item.src), "status": "failed", "detail": detail, "code": code})
    ui.failure(f"failed: {item.src}: {detail} ({code})")
    ui.advance()


async def run(args: argparse.Namespace, todo: list[tuple[Item, Path, str]], tally: Tally, ui: Console,
              total: int) -> None:
    """Start the pipeline (or reach the service), then keep ``--jobs`` files in flight until all are done.

    The bar (``total`` files, those settled by :func:`plan` already counted) starts once start-up is over.
    """
    worker = Remote(args) if args.url else Local(args)
    ui.say(f"contacting {args.url}…" if args.url else "loading models…")
    loading = time.perf_counter()
    try:
        worker.check_options()
        await worker.start()
    except FileFailed:
        await worker.close()
        raise
    except Exception as exc:
        await worker.close()
        raise FileFailed(str(exc), type(exc).__name__) from None
    gate = asyncio.Semaphore(args.jobs)
    started = time.perf_counter()
    tally.started, tally.startup_s = started, started - loading
    ui.start_bar(total, total - len(todo))

    async def one(item: Item, dst: Path, fmt: str) -> None:
        async with gate:
            part = dst.with_name(f".{dst.name}.part")
            try:
                await asyncio.to_thread(dst.parent.mkdir, parents=True, exist_ok=True)
                if item.video:
                    actual, pixels = await worker.video(item.src, part, args.video_format)
                else:
                    data = await asyncio.to_thread(item.src.read_bytes)
                    body, actual, pixels = await worker.image(data)
                    await asyncio.to_thread(part.write_bytes, body)
                if actual != fmt and item.dst is None:  # the header misled the guess: name it by the answer
                    dst = output_path(item, args.output, args.pattern, args.scale, actual)
                os.replace(part, dst)  # whole or not at all: a rerun never skips a half-written file
            except FileFailed as exc:
                _report(tally, ui, item, exc.detail, exc.code)
                return
            except OSError as exc:
                _report(tally, ui, item, str(exc.strerror or exc), type(exc).__name__)
                return
            finally:
                part.unlink(missing_ok=True)
            tally.done += 1
            tally.output_pixels += pixels
            tally.files.append({"input": str(item.src), "output": str(dst), "status": "done", "format": actual,
                                "output_pixels": pixels})
            ui.advance(f"{tally.output_pixels / 1e6 / max(time.perf_counter() - started, 1e-9):.2f} MP/s")

    try:
        await asyncio.gather(*(one(*job) for job in todo))
    finally:
        await worker.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ui = Console(sys.stderr.isatty() if args.progress is None else args.progress, args.quiet, args.json)
    items, missing = collect(args.inputs, args.output)
    tally = Tally()
    for raw in missing:
        tally.failed += 1
        tally.failures.append(f"{raw}: no such file, folder or match")
        tally.files.append({"input": raw, "status": "failed", "detail": "no such file, folder or match",
                            "code": "not_found"})
        ui.failure(f"failed: {raw}: no such file, folder or match")
    single = len(items) == 1 and len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    if single and not args.output.is_dir() and args.output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        items = [Item(items[0].src, Path(), items[0].video, dst=args.output)]  # -o names the output file
    if not items and not missing:
        ui.failure(f"nothing to do: no image or video files in {', '.join(args.inputs)}")
    error: str | None = None
    try:
        todo = plan(args, items, tally, ui)
        if todo:
            asyncio.run(run(args, todo, tally, ui, len(items)))
    except FileFailed as exc:
        error = exc.detail
    except KeyboardInterrupt:
        ui.close()
        ui.failure("espcn-upscale: interrupted; the outputs written so far are complete")
        return 130
    finally:
        ui.close()
    status = 1 if tally.failed or error else 0
    work_s = time.perf_counter() - tally.started if tally.started else 0.0
    if args.json:
        print(json.dumps(summary(tally, work_s, error), indent=1))
        return status
    if error is not None:
        print(f"espcn-upscale: {error}", file=sys.stderr)
        return 1
    rate = f"{tally.done / work_s:.2f} images/s, {tally.output_pixels / 1e6 / work_s:.2f} MP/s out" if work_s else \
        "nothing run"
    if not args.quiet:
        startup = f" (start-up {tally.startup_s:.1f} s)" if tally.started else ""
        print(f"{tally.done} upscaled, {tally.skipped} skipped (output exists), {tally.failed} failed; "
              f"{work_s:.1f} s after start-up ({rate}){startup}")
    return status


def summary(tally: Tally, work_s: float, error: str | None) -> dict[str, object]:
    """The ``--json`` document: what a script needs without parsing the terminal's lines."""
    return {
        "done": tally.done, "skipped": tally.skipped, "failed": tally.failed, "error": error,
        "startup_s": round(tally.startup_s, 3), "work_s": round(work_s, 3),
        "images_per_s": round(tally.done / work_s, 3) if work_s else None,
        "output_megapixels_per_s": round(tally.output_pixels / 1e6 / work_s, 3) if work_s else None,
        "files": tally.files,
    }

if __name__ == "__main__":
    sys.exit(main())
