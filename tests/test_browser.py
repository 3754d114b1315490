"""The web page in a real browser: Playwright driving the system's headless Chromium against the real service.

The service runs as its own process (uvicorn, the shipped models) on a free
loopback port; every page runs with the network cut off (any request to
another host is aborted and fails the test). Screenshots go to the
``SR_SCREENSHOT_DIR`` folder (default: pytest's temporary folder);
``SR_UPDATE_SCREENSHOTS=1`` also rewrites ``docs/web_page.png``.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs
it) or ``SR_CHROMIUM=/path/to/chrome``. Without it these tests skip, except
under CI, where they fail.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from app.cli.benchlib.launch import spawn_service, stop_service, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def chromium_path() -> str | None:
    """``SR_CHROMIUM`` when set (only it), else Debian's ``chromium``."""
    chosen = os.environ.get("SR_CHROMIUM")
    candidates = [chosen] if chosen else [shutil.which("chromium"), "/usr/bin/chromium"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "no Chromium: apt-get install chromium (or set SR_CHROMIUM); .ci/run installs it"
    return None


MISSING = _requirements()
if MISSING and os.environ.get("CI") == "true":
    pytest.fail(f"browser tests cannot run in CI: {MISSING}", pytrace=False)
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.slow]

if MISSING is None:
    from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout


# -- the service and the browser -----------------------------------------------------------------


class Service:
    """``python -m app.serve`` (one worker) in a child process, on the shipped models; its output in ``log``."""

    def __init__(self, log: Path, **env: str) -> None:
        self.log = log
        self.served = spawn_service({"SR_WORKERS": "1", "SR_DEVICE": "cpu", "SR_CODEC_THREADS": "2", **env}, log=log)
        self.port, self.url, self.process = self.served.port, self.served.url, self.served.process

    def wait_ready(self, timeout_s: float = 90) -> None:
        try:
            wait_ready(self.url, self.process, timeout_s)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log.read_text(errors='replace')[-3000:]}") from None

    def stop(self) -> None:
        stop_service(self.served, timeout_s=15)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("services")
    started = {"on": Service(logs / "on.log"),  # both boot at once
               "off": Service(logs / "off.log", SR_DEBUG_ROUTES="false")}
    try:
        for service in started.values():
            service.wait_ready()
        yield started
    finally:
        for service in started.values():
            service.stop()


@pytest.fixture(scope="module")
def service(services: dict[str, Service]) -> Service:
    return services["on"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture(params=[pytest.param({}, id="desktop")])
def page(request: pytest.FixtureRequest, browser: Browser, service: Service) -> Iterator[Page]:
    """A page whose only reachable host is the service: anything else is aborted and fails the test.

    Desktop (1400 × 900) unless a test asks for the phone (390 × 844) by parametrising ``page`` indirectly.
    """
    options = request.param or {"viewport": {"width": 1400, "height": 900}}
    context = browser.new_context(**options, accept_downloads=True)
    outside: list[str] = []
    errors: list[str] = []
    console: list[str] = []

    def only_loopback(route: Route, request: Request) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("blob:", "data:")) or host == "127.0.0.1":
            route.continue_()
        else:
            outside.append(request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    p = context.new_page()
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    yield p
    context.close()
    assert not outside, f"the page tried to reach other hosts: {outside}"
    assert not errors, f"JavaScript errors: {errors}"
    # a 4xx answer (the error test) is logged by the browser itself; nothing else may be (ReDoc's CDN logo was)
    unexpected = [m for m in console if "status of 4" not in m]
    assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SR_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photograph: scikit-image's cat (Chelsea), 160×120."""
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(skdata.chelsea()).resize((160, 120), Image.Resampling.LANCZOS).save(path)
    return path


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def service_output(service: Service, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as f:
        response = httpx.post(f"{service.url}/upscale", params=params, files={"file": (path.name, f)}, timeout=60)
    return response


def drawn_pixels(page: Page, selector: str) -> np.ndarray:
    """The RGB pixels of an <img> as the browser decoded them (drawn 1:1 on a canvas)."""
    b64 = page.eval_on_selector(selector, """img => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let s = ''; for (let i = 0; i < d.length; i += 8192) s += String.fromCharCode(...d.subarray(i, i + 8192));
        return [c.width, c.height, btoa(s)];
    }""")
    w, h, data = b64
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(h, w, 4)[..., :3]


def open_page(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/")
    page.wait_for_selector("#scale option[value='3']", state="attached")


def focus_by_tab(page: Page, test_id: str, limit: int = 30) -> None:
    """Press Tab until the element with ``data-testid=test_id`` has the focus (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.dataset.testid") == test_id:
            return
    raise AssertionError(f"Tab never reached data-testid={test_id}")


def choose_with_keyboard(page: Page, path: Path) -> None:
    """Space on the focused file input opens the file chooser (one retry: a cold Chromium once missed it)."""
    for attempt in range(2):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            chooser.value.set_files(path)
            return
        except PlaywrightTimeout:
            if attempt:
                raise


# -- the tests -----------------------------------------------------------------------------------

def test_upscale_a_photo_with_the_keyboard_alone(page: Page, service: Service, photo: Path, shots: Path) -> None:
    open_page(page, service)
    expect(page.get_by_test_id("upscale")).to_be_disabled()
    focus_by_tab(page, "file")
    choose_with_keyboard(page, photo)
    expect(page.locator("#file-name")).to_contain_text("chelsea.png")
    focus_by_tab(page, "scale")
    page.select_option("#scale", "3")
    focus_by_tab(page, "upscale")
    page.keyboard.press("Enter")

    result = page.get_by_test_id("result")
    expect(result).to_have_js_property("naturalWidth", 480)  # the pages' CSP forbids eval: no wait_for_function
    assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [480, 360]

    expected = service_output(service, photo, scale=3, format="png")
    assert expected.status_code == 200
    want = decoded(expected.content)
    assert want.shape == (360, 480, 3)
    np.testing.assert_array_equal(drawn_pixels(page, "[data-testid=result]"), want)  # what the page shows

    expect(page.get_by_test_id("output-info")).to_contain_text("480 × 360 px")
    expect(page.get_by_test_id("input-info")).to_contain_text("160 × 120 px")
    timing = page.get_by_test_id("time").inner_text()
    assert "ms in the service" in timing and "model" in timing and "round trip" in timing

    download = page.get_by_test_id("download")
    focus_by_tab(page, "download")
    with page.expect_download() as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "chelsea_x3.png"
    saved = Path(info.value.path()).read_bytes()
    np.testing.assert_array_equal(decoded(saved), want)
    assert download.get_attribute("download") == "chelsea_x3.png"

    page.screenshot(path=shots / "upscaled_slider.png")


def test_views_compare_the_same_area_with_nearest_neighbour(
    page: Page, service: Service, photo: Path, shots: Path
) -> None:
    open_page(page, service)
    page.get_by_test_id("file").set_input_files(photo)
    page.select_option("#scale", "2")
    page.get_by_test_id("upscale").click()
    expect(page.get_by_test_id("result")).to_have_js_property("naturalWidth", 320)

    # the slider: both images cover the same box; the split moves with the keyboard
    boxes = [page.locator(s).bounding_box() for s in ("#before", "#after")]
    assert boxes[0] == boxes[1]
    assert page.eval_on_selector("#before", "e => getComputedStyle(e).imageRendering") == "pixelated"
    split = page.locator("#split")
    split.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    assert split.input_value() == "40"
    width = page.eval_on_selector("#compare", "e => e.getBoundingClientRect().width")
    assert page.eval_on_selector("#after", "e => e.style.clipPath") == f"inset(0px 0px 0px {round(0.4 * width)}px)"

    # side by side at 4x: the original is drawn at the result's size times the zoom, pixelated, scrolled together
    page.get_by_label("Side by side").check()
    page.get_by_label("4×").check()
    for selector in ("#side-before", "#side-after"):
        size = page.eval_on_selector(selector, "e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height]")
        assert size == [1280, 960], selector
        assert page.eval_on_selector(selector, "e => getComputedStyle(e).imageRendering") == "pixelated"
    page.eval_on_selector("#pane-before", "e => { e.scrollLeft = 100; e.scrollTop = 50; }")
    expect(page.locator("#pane-after")).to_have_js_property("scrollLeft", 100)
    expect(page.locator("#pane-after")).to_have_js_property("scrollTop", 50)
    page.screenshot(path=shots / "side_by_side_4x.png")


def test_output_format_is_the_one_asked_for(page: Page, service: Service, photo: Path) -> None:
    open_page(page, service)
    page.get_by_test_id("file").set_input_files(photo)
    page.select_option("#format", "jpeg")
    expect(page.locator("#quality")).to_be_visible()
    page.fill("#quality", "80")
    page.get_by_test_id("upscale").click()
    download = page.get_by_test_id("download")
    expect(download).to_have_attribute("download", "chelsea_x3.jpg")
    expect(page.get_by_test_id("output-info")).to_contain_text("JPEG")
    with page.expect_download() as info:
        download.click()
    data = Path(info.value.path()).read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert data == service_output(service, photo, scale=3, format="jpeg", quality=80).content


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_an_image_can_be_dropped_or_pasted(page: Page, service: Service, photo: Path, how: str) -> None:
    open_page(page, service)
    b64 = base64.b64encode(photo.read_bytes()).decode()
    page.evaluate("""([how, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], how === 'drop' ? 'dropped.png' : 'image.png', {type: 'image/png'}));
        const event = how === 'drop'
            ? new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true})
            : new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true});
        (how === 'drop' ? document.getElementById('drop') : document).dispatchEvent(event);
    }""", [how, b64])
    expect(page.locator("#file-name")).to_contain_text("dropped.png" if how == "drop" else "pasted.png")
    page.get_by_test_id("upscale").click()
    expect(page.get_by_test_id("result")).to_have_js_property("naturalWidth", 480)


@pytest.mark.parametrize(("name", "media"), [("notes.txt", "text/plain"), ("notes.png", "image/png")])
def test_a_text_file_shows_the_service_error_in_words(
    page: Page, service: Service, shots: Path, name: str, media: str
) -> None:
    text = b"these are notes, not a photograph\n"
    answer = httpx.post(f"{service.url}/upscale", params={"scale": 3}, files={"file": (name, text, media)}, timeout=60)
    assert answer.status_code in (400, 415)
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail

    open_page(page, service)
    page.get_by_test_id("file").set_input_files({"name": name, "mimeType": media, "buffer": text})
    page.get_by_test_id("upscale").click()
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"({answer.status_code}): {detail}")
    assert "{" not in error.inner_text()  # words, not JSON
    expect(page.locator("#summary")).to_be_hidden()
    page.screenshot(path=shots / f"error_{name}.png")


def test_look_inside_shows_the_kernels_and_the_uploaded_image_channels(
    page: Page, service: Service, photo: Path, shots: Path
) -> None:
    open_page(page, service)
    page.get_by_test_id("file").set_input_files(photo)
    tab = page.get_by_role("tab", name="Look inside")
    expect(tab).to_be_visible()
    page.get_by_role("tab", name="Upscale").focus()
    page.keyboard.press("ArrowRight")  # tabs switch with the arrow keys
    expect(tab).to_have_attribute("aria-selected", "true")

    kernels = page.get_by_test_id("kernels")
    expect(kernels).to_have_attribute("src", "/kernels/deconv.png?scale=3")
    expect(kernels).not_to_have_js_property("naturalWidth", 0)
    assert kernels.get_attribute("alt")

    expect(page.locator("#channels-source")).to_contain_text("chelsea.png")
    expect(page.get_by_test_id("channels")).not_to_have_js_property("naturalWidth", 0)
    with photo.open("rb") as f:
        figure = httpx.post(f"{service.url}/debug/channels", params={"scale": 3, "format": "png"},
                            files={"file": (photo.name, f)}, timeout=60)
    np.testing.assert_array_equal(drawn_pixels(page, "[data-testid=channels]"), decoded(figure.content))

    expect(page.locator("#kernels-status")).to_be_empty()
    page.screenshot(path=shots / "look_inside.png", full_page=True)

    page.select_option("#inside-scale", "2")  # another model: both figures follow
    expect(kernels).to_have_attribute("src", "/kernels/deconv.png?scale=2")
    expect(page.locator("#channels-source")).to_contain_text("×2")
    expect(page.locator("#channels-status")).to_be_empty()
    expect(page.locator("#kernels-status")).to_be_empty()


def test_look_inside_is_hidden_when_debug_routes_are_off(page: Page, services: dict[str, Service]) -> None:
    open_page(page, services["off"])
    expect(page.get_by_role("tab", name="Upscale")).to_be_visible()
    expect(page.get_by_test_id("tab-inside")).to_be_hidden()


@pytest.mark.parametrize(("path", "rendered"), [
    ("/docs", ".swagger-ui .info .title"),
    ("/redoc", "redoc h1"),
])
def test_api_docs_render_with_the_network_cut_off(
    page: Page, service: Service, shots: Path, path: str, rendered: str
) -> None:
    page.goto(f"{service.url}{path}")
    expect(page.locator(rendered).first).to_contain_text("ESPCN super-resolution", timeout=20_000)
    expect(page.get_by_text("/upscale").first).to_be_visible()
    page.screenshot(path=shots / f"{path.strip('/')}.png")


def test_readme_screenshot(page: Page, service: Service, shots: Path) -> None:
    """The page as the README shows it: the sample photograph, ×3, before/after."""
    open_page(page, service)
    page.get_by_role("button", name="Use the sample photograph").click()
    expect(page.locator("#file-name")).to_contain_text("sample.png")
    page.get_by_test_id("upscale").click()
    expect(page.get_by_test_id("result")).to_have_js_property("naturalWidth", 384)
    page.mouse.move(0, 0)
    path = shots / "web_page.png"
    page.screenshot(path=path)
    assert Image.open(path).size == (1400, 900)
    if os.environ.get("SR_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / "web_page.png")


# -- issue 31: the details a person notices -------------------------------------------------------


@pytest.fixture(scope="module")
def animation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-frame animated GIF of the photograph, 80×60."""
    path = tmp_path_factory.mktemp("anim") / "anim.gif"
    base = Image.fromarray(skdata.chelsea()).resize((80, 60), Image.Resampling.LANCZOS)
    frames = [base.rotate(angle) for angle in (0, 4, 8)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def upscale_in_page(page: Page, path: Path, scale: str) -> None:
    page.get_by_test_id("file").set_input_files(path)
    page.select_option("#scale", scale)
    page.get_by_test_id("upscale").click()
    expect(page.get_by_test_id("download")).to_be_visible()


def box(page: Page, selector: str) -> dict[str, float]:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }")


def scroll_state(page: Page, selector: str) -> list[float]:
    return page.eval_on_selector(selector, "e => [e.scrollLeft, e.scrollTop, e.scrollWidth - e.clientWidth, "
                                           "e.scrollHeight - e.clientHeight]")


def test_an_animated_gif_downloads_as_gif_and_only_its_controls_show(
    page: Page, service: Service, animation: Path
) -> None:
    open_page(page, service)
    page.get_by_test_id("file").set_input_files(animation)
    quality, lossless = page.locator("#quality-field"), page.locator("#lossless-field")
    for fmt, shows_quality, shows_lossless in [("jpeg", True, False), ("webp", True, True), ("png", False, False),
                                               ("same", False, False)]:
        page.select_option("#format", fmt)
        (expect(quality).to_be_visible if shows_quality else expect(quality).to_be_hidden)()
        (expect(lossless).to_be_visible if shows_lossless else expect(lossless).to_be_hidden)()
    expect(page.get_by_test_id("format-hint")).to_contain_text("GIF")

    page.select_option("#scale", "2")
    page.get_by_test_id("upscale").click()
    download = page.get_by_test_id("download")
    expect(download).to_have_attribute("download", "anim_x2.gif")
    expect(page.get_by_test_id("output-info")).to_contain_text("160 × 120 px")
    expect(page.get_by_test_id("output-info")).to_contain_text("GIF")
    with page.expect_download() as info:
        download.click()
    assert info.value.suggested_filename == "anim_x2.gif"
    assert Path(info.value.path()).read_bytes()[:6] == b"GIF89a"


def test_zoomed_views_open_at_the_centre(page: Page, service: Service, photo: Path, shots: Path) -> None:
    open_page(page, service)
    page.screenshot(path=shots / "desktop_before.png")
    upscale_in_page(page, photo, "2")
    page.get_by_label("4×").check()
    left, top, max_left, max_top = scroll_state(page, "#compare-scroll")
    assert max_left > 0 and abs(left - max_left / 2) <= 1 and abs(top - max_top / 2) <= 1
    page.mouse.move(0, 0)
    page.screenshot(path=shots / "desktop_slider_4x.png")

    page.get_by_label("Side by side").check()
    for pane in ("#pane-before", "#pane-after"):
        left, top, max_left, max_top = scroll_state(page, pane)
        assert max_left > 0 and abs(left - max_left / 2) <= 1 and abs(top - max_top / 2) <= 1, pane
    # a pixel at the image's centre is in the middle of both panes: the cat, not the dark top-left corner
    page.screenshot(path=shots / "desktop_side_by_side_4x.png")


def test_the_split_handle_stays_in_view_at_every_zoom(page: Page, service: Service, photo: Path) -> None:
    open_page(page, service)
    upscale_in_page(page, photo, "2")
    page.locator("#split").fill("30")
    for zoom in ("Fit", "1:1", "2×", "4×", "8×"):
        page.get_by_label(zoom, exact=True).check()
        for scrolled in (False, True):
            if scrolled:  # to the far right and bottom: the handle follows
                page.eval_on_selector("#compare-scroll", "e => { e.scrollLeft = e.scrollWidth; e.scrollTop = e.scrollHeight; }")
                page.wait_for_timeout(50)
            view, image, handle = box(page, "#compare-scroll"), box(page, "#compare"), box(page, "#divider")
            seen_left, seen_right = max(view["left"], image["left"]), min(view["right"], image["right"])
            middle = (handle["left"] + handle["right"]) / 2
            assert seen_left <= middle <= seen_right, (zoom, scrolled, view, handle)
            assert abs(middle - (seen_left + 0.3 * (seen_right - seen_left))) <= 2, (zoom, scrolled)
            knob = page.eval_on_selector("#divider", "e => parseFloat(e.style.getPropertyValue('--knob-y'))")
            assert max(view["top"], image["top"]) <= image["top"] + knob <= min(view["bottom"], image["bottom"])


@pytest.mark.parametrize("page", [pytest.param(PHONE, id="phone")], indirect=True)
def test_at_phone_width_the_result_is_brought_into_view(page: Page, service: Service, photo: Path,
                                                        shots: Path) -> None:
    open_page(page, service)
    page.screenshot(path=shots / "phone_before.png", full_page=True)
    upscale_in_page(page, photo, "3")
    expect(page.locator("#compare")).to_be_in_viewport(ratio=0.95)  # scrolled to, without the user looking for it
    assert page.evaluate("window.scrollY") > 0
    page.screenshot(path=shots / "phone_after.png")
    viewer, shown = box(page, "#viewer"), box(page, "#slider-view")
    kids = page.eval_on_selector("#viewer", "v => [...v.children].map(c => [c.id || c.className, c.getBoundingClientRect().top, c.getBoundingClientRect().bottom, getComputedStyle(c).display])")
    assert viewer["bottom"] - shown["bottom"] <= 40, (viewer, shown, kids)  # no block of empty space below it
    page.get_by_label("4×").check()
    expect(page.get_by_test_id("divider")).to_be_in_viewport()
    left, _, max_left, _ = scroll_state(page, "#compare-scroll")
    assert abs(left - max_left / 2) <= 1
    page.screenshot(path=shots / "phone_4x.png")


def test_the_footer_says_workers_device_and_backend(page: Page, service: Service) -> None:
    open_page(page, service)
    expect(page.get_by_test_id("serving")).to_have_text(re.compile(
        r"Served by 1 worker process on the CPU, \d+ inference threads?, (ONNX Runtime|TorchScript|PyTorch)\."))


def test_a_video_goes_through_the_jobs_api_with_progress(
    page: Page, service: Service, tmp_path: Path, shots: Path
) -> None:
    from app.cli.benchlib.synth_video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", 64, 36, 10, 2.0, audio=None)
    open_page(page, service)
    page.get_by_test_id("file").set_input_files(clip)
    expect(page.get_by_test_id("video-format")).to_be_visible()
    expect(page.get_by_test_id("format")).to_be_hidden()
    expect(page.locator("#quality-field")).to_be_hidden()
    page.select_option("#scale", "2")
    page.get_by_test_id("upscale").click()
    expect(page.get_by_test_id("job")).to_be_visible()
    expect(page.get_by_test_id("job-text")).to_contain_text("%")
    download = page.get_by_test_id("download")
    expect(download).to_have_attribute("download", "clip_x2.mp4", timeout=60_000)
    expect(page.get_by_test_id("job-text")).to_contain_text("100 %")
    assert page.eval_on_selector("[data-testid=video-result]", "v => v.src.startsWith('blob:')")
    expect(page.get_by_test_id("output-info")).to_contain_text("128 × 72 px")
    with page.expect_download() as info:
        download.click()
    assert Path(info.value.path()).read_bytes()[4:8] == b"ftyp"
    page.screenshot(path=shots / "video_done.png")
