// The ESPCN service's web page: no framework, no build step, same-origin requests only.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  file: null,          // the chosen File (or Blob with a name)
  inputUrl: null,      // object URL of the original
  inputSize: null,     // {w, h} when the browser can show the original
  resultUrl: null,     // object URL of the answer
  resultSize: null,
  scale: null,
  models: [],
  debugRoutes: false,
  channelsUrl: null,
  channelsFor: null,   // "<file key>|<scale>" the channel figure was drawn for
  split: 50,           // percent of the *visible* width showing the original, at any zoom
  centre: {x: 0.5, y: 0.5},  // the point of the image at the middle of the zoomed views (fractions)
  zoomed: false,
  job: null,           // the running video job: {id, statusUrl, cancelled}
  jobsMaxBytes: 0,
};

const SMALL_SCREEN = "(max-width: 900px)";  // one column: the viewer comes below the controls

// -- small helpers -------------------------------------------------------------------------------

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  const mib = n / 1024 / 1024;
  return `${Number.isInteger(mib) ? mib : mib.toFixed(2)} MiB`;
}

function formatKind(type) {
  const map = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/gif": "GIF",
    "image/bmp": "BMP", "image/tiff": "TIFF"};
  return map[type] || type || "unknown type";
}

const EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
  "video/mp4": "mp4", "video/webm": "webm"};
const VIDEO_EXTENSIONS = /\.(mp4|m4v|mov|mkv|webm|avi|mpe?g|ts|wmv|flv|3gp|ogv)$/i;

function isVideo(file) {
  return Boolean(file) && ((file.type || "").startsWith("video/") || VIDEO_EXTENSIONS.test(file.name || ""));
}

/** The format the service will answer in, as far as the page can tell before asking. */
function effectiveFormat() {
  const fmt = $("format").value;
  if (fmt !== "same") return fmt;
  const type = state.file ? state.file.type : "";
  return {"image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}[type] || "png";
}

/** "clip.mp4" from 'attachment; filename="clip_x3.mp4"' (or filename*=utf-8''…), else null. */
function dispositionName(header) {
  if (!header) return null;
  const star = /filename\*=(?:utf-8|UTF-8)''([^;]+)/.exec(header);
  if (star) return decodeURIComponent(star[1]);
  const plain = /filename="?([^";]+)"?/.exec(header);
  return plain ? plain[1] : null;
}

/** Server-Timing "decode;dur=6.0, model;dur=67.1, encode;dur=36.0" → [{name, dur}]. */
function parseServerTiming(header) {
  if (!header) return [];
  return header.split(",").map((entry) => {
    const [name, ...params] = entry.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return {name: name.trim(), dur: dur ? Number(dur.slice(4)) : NaN};
  }).filter((t) => t.name && Number.isFinite(t.dur));
}

/** The words of a service error: its JSON ``detail`` (a sentence; ``errors`` has the fields, also named in it). */
async function errorText(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return `The service answered ${response.status} ${response.statusText}.`;
  }
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => [Array.isArray(d.loc) ? d.loc.join(".") : "", d.msg].filter(Boolean).join(": ")).join("; ");
  }
  return `The service answered ${response.status}.`;
}

function loadImage(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve({w: img.naturalWidth, h: img.naturalHeight});
    img.onerror = () => reject(new Error("the browser cannot display this file"));
    img.src = url;
  });
}

function stem(name) {
  const base = (name || "image").replace(/^.*[\\/]/, "");
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

// -- start-up: models and page config ------------------------------------------------------------

async function loadModels() {
  const select = $("scale");
  try {
    const [models, config] = await Promise.all([
      fetch("/models").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`GET /models: ${r.status}`)))),
      fetch("/web/config").then((r) => (r.ok ? r.json() : {debug_routes: false})),
    ]);
    state.models = models.models;
    state.debugRoutes = Boolean(config.debug_routes);
    state.jobsMaxBytes = config.jobs_max_upload_bytes || 0;
    if (config.max_body_bytes) {
      $("drop-limit").textContent = `images up to ${formatBytes(config.max_body_bytes)}` +
        (state.jobsMaxBytes ? `, videos up to ${formatBytes(state.jobsMaxBytes)}` : "");
    }
    if (config.serving) $("device").textContent = `Served by ${config.serving}.`;
  } catch (err) {
    select.innerHTML = "<option value=\"\">no models</option>";
    showError(`Could not list the served models (${err.message}). Is the service ready?`);
    return;
  }
  select.innerHTML = "";
  const inside = $("inside-scale");
  inside.innerHTML = "";
  for (const m of state.models) {
    const metric = m.metrics && m.metrics[0];
    const label = `×${m.scale} — ${m.name}`;
    select.add(new Option(label, String(m.scale)));
    inside.add(new Option(label, String(m.scale)));
    if (metric) select.options[select.options.length - 1].dataset.hint =
      `${metric.dataset}: ${metric.psnr.toFixed(2)} dB PSNR` +
      (metric.bicubic_psnr ? ` (bicubic ${metric.bicubic_psnr.toFixed(2)} dB)` : "");
  }
  if (!state.models.length) {
    select.add(new Option("no models served", ""));
    showError("The service serves no model yet.");
  }
  const preferred = state.models.find((m) => m.scale === 3) || state.models[0];
  if (preferred) select.value = inside.value = String(preferred.scale);
  updateScaleHint();
  $("tab-inside").hidden = !state.debugRoutes;
  updateButton();
}

function updateScaleHint() {
  const opt = $("scale").selectedOptions[0];
  $("scale-hint").textContent = (opt && opt.dataset.hint) || "";
}

function updateButton() {
  $("upscale").disabled = !(state.file && $("scale").value);
}

/** Show only the controls that change the answer: quality for JPEG/WebP, lossless for WebP, none for GIF/PNG. */
function updateFormatFields() {
  const video = isVideo(state.file);
  $("format-field").hidden = video;
  $("video-format-field").hidden = !video;
  const out = effectiveFormat();
  $("quality-field").hidden = video || (out !== "jpeg" && out !== "webp");
  $("lossless-field").hidden = video || out !== "webp";
  const names = {png: "PNG", jpeg: "JPEG", webp: "WebP", gif: "GIF (an animation stays animated)"};
  $("format-hint").textContent = !video && $("format").value === "same" && state.file
    ? `For this file: ${names[out]}${out === "png" || out === "gif" ? ", lossless; nothing to set" : ""}.` : "";
}

// -- choosing an image ---------------------------------------------------------------------------

async function setFile(file) {
  if (!file) return;
  state.file = file;
  state.channelsFor = null;
  showError("");
  setStatus("");
  $("file-name").textContent = `${file.name || "pasted image"} · ${formatBytes(file.size)}`;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  clearResult();
  updateFormatFields();
  if (isVideo(file)) {
    state.inputSize = null;
    $("before").removeAttribute("src");
    showViewer(false);
    setStatus("A video: it goes to the jobs API and its progress shows here.");
    updateButton();
    return;
  }
  try {
    state.inputSize = await loadImage($("before"), state.inputUrl);
    $("side-before").src = state.inputUrl;
    showViewer(true);
  } catch {
    state.inputSize = null;
    showViewer(false);
    setStatus("The browser cannot preview this file; the service will say whether it can read it.");
  }
  updateButton();
  if (!$("view-inside").hidden) refreshInside();
}

function clearResult() {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = null;
  state.resultSize = null;
  $("after").removeAttribute("src");
  $("side-after").removeAttribute("src");
  $("summary").hidden = true;
  $("compare").classList.remove("has-result");
  $("compare-frame").classList.remove("has-result");
  $("video-view").hidden = true;
  $("video-result").removeAttribute("src");
  state.centre = {x: 0.5, y: 0.5};
}

function showViewer(visible) {
  const video = !$("video-view").hidden;
  $("empty").hidden = visible || video;
  const mode = document.querySelector("input[name=mode]:checked").value;
  $("slider-view").hidden = !visible || mode !== "slider";
  $("side-view").hidden = !visible || mode !== "side";
  document.querySelectorAll(".viewer-bar .segmented").forEach((g) => { g.hidden = video; });
  applyZoom();
}

async function useSample() {
  const response = await fetch("/web/sample.png");
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  const blob = await response.blob();
  await setFile(new File([blob], "sample.png", {type: blob.type || "image/png"}));
}

// -- upscaling -----------------------------------------------------------------------------------

async function upscale(event) {
  event.preventDefault();
  if (!state.file || !$("scale").value) return;
  if (isVideo(state.file)) {
    await upscaleVideo();
    return;
  }
  const scale = Number($("scale").value);
  const params = new URLSearchParams({scale: String(scale), format: $("format").value});
  if (!$("quality-field").hidden && $("quality").value) params.set("quality", $("quality").value);
  if (!$("lossless-field").hidden && $("lossless").checked) params.set("lossless", "true");
  const body = new FormData();
  body.append("file", state.file, state.file.name || "image");

  const button = startBusy();
  setStatus(`Upscaling ×${scale}…`);
  const started = performance.now();
  try {
    const response = await fetch(`/upscale?${params}`, {method: "POST", body});
    if (!response.ok) {
      const text = await errorText(response);
      clearResult();
      setStatus("");
      showError(`Could not upscale (${response.status}): ${text}`);
      return;
    }
    const blob = await response.blob();
    const roundTrip = performance.now() - started;
    await showResult(response, blob, scale, roundTrip);
  } catch (err) {
    setStatus("");
    showError(`Could not reach the service: ${err.message}`);
  } finally {
    endBusy(button);
  }
}

async function showResult(response, blob, scale, roundTrip) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  state.scale = scale;
  const type = (response.headers.get("content-type") || blob.type).split(";")[0];
  state.resultSize = await loadImage($("after"), state.resultUrl);
  $("side-after").src = state.resultUrl;
  const {w, h} = state.resultSize;
  $("after").alt = `Upscaled ×${scale} result, ${w} × ${h} pixels`;
  $("side-after").alt = $("after").alt;
  $("after-badge").textContent = `ESPCN ×${scale}`;
  $("compare").classList.add("has-result");
  $("compare-frame").classList.add("has-result");

  const inKind = formatKind(state.file.type);
  $("in-info").textContent = state.inputSize
    ? `${state.inputSize.w} × ${state.inputSize.h} px · ${formatBytes(state.file.size)} · ${inKind}`
    : `${formatBytes(state.file.size)} · ${inKind}`;
  $("out-info").textContent = `${w} × ${h} px · ${formatBytes(blob.size)} · ${formatKind(type)}`;
  $("model-info").textContent = `${response.headers.get("x-model") || "?"} (×${response.headers.get("x-scale") || scale})`;

  const timings = parseServerTiming(response.headers.get("server-timing"));
  const total = Number(response.headers.get("x-process-time-ms"));
  const parts = timings.map((t) => `${t.name} ${t.dur.toFixed(0)}`).join(" · ");
  $("time-info").textContent =
    (Number.isFinite(total) ? `${total.toFixed(0)} ms in the service` : "") +
    (parts ? ` (${parts} ms)` : "") + `; ${roundTrip.toFixed(0)} ms round trip`;

  const link = $("download");
  link.href = state.resultUrl;
  link.download = `${stem(state.file.name)}_x${scale}.${EXTENSIONS[type] || "png"}`;
  link.textContent = `Download ${link.download}`;
  $("summary").hidden = false;
  $("side-before-cap").textContent = state.inputSize
    ? `${state.inputSize.w} × ${state.inputSize.h}, nearest neighbour ×${scale}` : "";
  $("side-after-cap").textContent = `×${scale}, ${w} × ${h}`;
  setStatus(`Done: ×${scale} in ${Number.isFinite(total) ? total.toFixed(0) : roundTrip.toFixed(0)} ms.`);
  if (!state.inputSize) $("before").removeAttribute("src");
  state.centre = {x: 0.5, y: 0.5};
  showViewer(true);
  revealResult();
}

/** On a one-column screen the viewer is below the controls: bring the result into view. */
function revealResult() {
  if (!window.matchMedia(SMALL_SCREEN).matches) return;
  const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  $("viewer").scrollIntoView({behavior: still ? "auto" : "smooth", block: "start"});
}

// -- videos, through the jobs API ----------------------------------------------------------------

function setJob(progress, text) {
  $("job").hidden = progress === null;
  if (progress !== null) $("job-progress").value = progress;
  $("job-text").textContent = text || "";
}

/** The upscale button while a request runs: disabled, announced busy, saying so; earlier errors cleared. */
function startBusy() {
  const button = $("upscale");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = "Upscaling…";
  showError("");
  return button;
}

/** The upscale button back to rest once the request has ended, however it ended. */
function endBusy(button) {
  button.removeAttribute("aria-busy");
  button.textContent = "Upscale";
  updateButton();
}

async function upscaleVideo() {
  const scale = Number($("scale").value);
  const params = new URLSearchParams({scale: String(scale), format: $("video-format").value});
  const body = new FormData();
  body.append("file", state.file, state.file.name || "video");
  const button = startBusy();
  setStatus(`Uploading the video (${formatBytes(state.file.size)})…`);
  setJob(0, "uploading");
  const job = {cancelled: false};
  state.job = job;
  try {
    const created = await fetch(`/jobs?${params}`, {method: "POST", body});
    if (!created.ok) {
      setJob(null);
      setStatus("");
      showError(`Could not start the video job (${created.status}): ${await errorText(created)}`);
      return;
    }
    const {id, status_url: statusUrl, result_url: resultUrl} = await created.json();
    Object.assign(job, {id, statusUrl});
    setStatus(`Video job ${id.slice(0, 8)} queued.`);
    let status = null;
    for (;;) {
      const answer = await fetch(statusUrl);
      if (job.cancelled) return;
      if (!answer.ok) throw new Error(await errorText(answer));
      status = await answer.json();
      const frames = status.frames_total ? `frame ${status.frames_done} of ${status.frames_total}` : status.state;
      const rate = status.fps ? ` · ${status.fps.toFixed(1)} frames/s` : "";
      const eta = status.eta_s !== null && status.state === "running" ? ` · about ${Math.ceil(status.eta_s)} s left` : "";
      setJob(status.progress, `${Math.round(status.progress * 100)} % · ${frames}${rate}${eta}`);
      if (status.state === "done") break;
      if (status.state === "failed" || status.state === "cancelled") {
        setJob(null);
        setStatus("");
        showError(`The video job ${status.state}: ${status.error || "no reason given"}`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
    const result = await fetch(resultUrl);
    if (!result.ok) throw new Error(await errorText(result));
    const blob = await result.blob();
    showVideoResult(result, blob, scale, status);
    setJob(1, "100 % · done");
  } catch (err) {
    setJob(null);
    setStatus("");
    showError(`The video job did not finish: ${err.message}`);
  } finally {
    if (state.job === job) state.job = null;
    endBusy(button);
  }
}

function showVideoResult(response, blob, scale, status) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const type = (response.headers.get("content-type") || blob.type).split(";")[0];
  const video = $("video-result");
  video.src = state.resultUrl;
  $("video-view").hidden = false;
  showViewer(false);
  const input = (status.info && status.info.input) || status.info || {};
  const output = (status.info && status.info.output) || {};
  $("in-info").textContent = (input.width ? `${input.width} × ${input.height} px · ` : "") +
    `${formatBytes(state.file.size)} · ${formatKind(state.file.type) || "video"}`;
  $("out-info").textContent = (output.width ? `${output.width} × ${output.height} px · ` : "") +
    `${formatBytes(blob.size)} · ${type}`;
  $("model-info").textContent = `×${response.headers.get("x-scale") || scale}`;
  const took = status.started && status.finished ? status.finished - status.started : null;
  $("time-info").textContent = (took !== null ? `${took.toFixed(1)} s in the service` : "") +
    (status.fps ? ` (${status.fps.toFixed(1)} frames/s)` : "");
  const link = $("download");
  link.href = state.resultUrl;
  link.download = dispositionName(response.headers.get("content-disposition")) ||
    `${stem(state.file.name)}_x${scale}.${EXTENSIONS[type] || "mp4"}`;
  link.textContent = `Download ${link.download}`;
  $("summary").hidden = false;
  setStatus(`Done: the video ×${scale}.`);
  revealResult();
}

async function cancelJob() {
  const job = state.job;
  if (!job) return;
  job.cancelled = true;
  if (job.statusUrl) await fetch(job.statusUrl, {method: "DELETE"});
  setJob(null);
  setStatus("The video job was cancelled.");
}

// -- the comparison views ------------------------------------------------------------------------

function displaySize() {
  // both images are drawn at the output's size (the original enlarged ×r by nearest neighbour)
  if (state.resultSize) return state.resultSize;
  if (state.inputSize) {
    const r = Number($("scale").value) || 1;
    return {w: state.inputSize.w * r, h: state.inputSize.h * r};
  }
  return null;
}

/** The scroller that shows the zoomed image now (the slider's, or the original's pane side by side). */
function visibleScroller() {
  return !$("slider-view").hidden ? $("compare-scroll") : !$("side-view").hidden ? $("pane-before") : null;
}

function rememberCentre() {
  const s = visibleScroller();
  if (!s || !state.zoomed || !s.scrollWidth) return;
  state.centre = {x: (s.scrollLeft + s.clientWidth / 2) / s.scrollWidth,
    y: (s.scrollTop + s.clientHeight / 2) / s.scrollHeight};
}

/** Scroll the zoomed views so that ``state.centre`` is in the middle (the image's centre when first zoomed). */
function restoreCentre() {
  for (const s of [$("compare-scroll"), $("pane-before"), $("pane-after")]) {
    s.scrollLeft = state.centre.x * s.scrollWidth - s.clientWidth / 2;
    s.scrollTop = state.centre.y * s.scrollHeight - s.clientHeight / 2;
  }
}

function applyZoom() {
  const zoom = document.querySelector("input[name=zoom]:checked").value;
  const size = displaySize();
  const fit = zoom === "fit" || !size;
  if (fit || !state.zoomed) state.centre = {x: 0.5, y: 0.5};  // from "Fit", a zoom opens at the centre
  const compare = $("compare");
  let cw = "", ch = "";
  if (size && fit) {
    // "Fit": the whole image inside the visible area, up or down (the original stays nearest-neighbour)
    const scroller = $("compare-scroll");
    const small = window.matchMedia(SMALL_SCREEN).matches;  // the page scrolls the viewer to the top there
    const top = scroller.getBoundingClientRect().top + window.scrollY;
    const room = small ? Math.max(200, window.innerHeight - 140)
      : Math.max(320, window.innerHeight - Math.max(0, top - window.scrollY) - 80);
    const k = Math.min(scroller.clientWidth / size.w, room / size.h) || 1;
    cw = `${Math.floor(size.w * k)}px`;
    ch = `${Math.floor(size.h * k)}px`;
  } else if (size) {
    cw = `${size.w * Number(zoom)}px`;
    ch = `${size.h * Number(zoom)}px`;
  }
  compare.style.width = cw;
  compare.style.height = ch;
  for (const id of ["side-before", "side-after"]) {
    const el = $(id);
    el.style.width = fit ? "" : cw;
    el.style.height = fit ? "" : ch;
    el.classList.toggle("fit", fit);
  }
  document.querySelectorAll(".viewer").forEach((v) => v.classList.toggle("zoomed", !fit));
  state.zoomed = !fit;
  if (!fit) restoreCentre();
  renderSplit();
}

/** The part of the image the slider's scroller shows, in client pixels: where the split is measured. */
function visibleSpan() {
  const c = $("compare").getBoundingClientRect();
  const s = $("compare-scroll").getBoundingClientRect();
  return {c, left: Math.max(c.left, s.left), right: Math.min(c.right, s.right),
    top: Math.max(c.top, s.top), bottom: Math.min(c.bottom, s.bottom)};
}

/** Draw the split at ``state.split`` percent of what is in view, so the handle is on screen at every zoom. */
function renderSplit() {
  const {c, left, right, top, bottom} = visibleSpan();
  const x = Math.round(left - c.left + (state.split / 100) * Math.max(0, right - left));
  $("after").style.clipPath = `inset(0 0 0 ${x}px)`;
  const divider = $("divider");
  divider.style.left = `${x}px`;
  divider.style.setProperty("--knob-y", `${Math.max(0, (top + bottom) / 2 - c.top)}px`);
}

function setSplit(percent) {
  state.split = Math.max(0, Math.min(100, percent));
  $("split").value = String(Math.round(state.split));
  renderSplit();
}

function bindSlider() {
  const compare = $("compare");
  let dragging = false;
  const move = (event) => {
    const {left, right} = visibleSpan();
    setSplit(((event.clientX - left) / Math.max(1, right - left)) * 100);
  };
  compare.addEventListener("pointerdown", (event) => {
    dragging = true;
    compare.setPointerCapture(event.pointerId);
    move(event);
  });
  compare.addEventListener("pointermove", (event) => { if (dragging) move(event); });
  compare.addEventListener("pointerup", () => { dragging = false; });
  compare.addEventListener("pointercancel", () => { dragging = false; });
  $("split").addEventListener("input", (event) => setSplit(Number(event.target.value)));
  $("compare-scroll").addEventListener("scroll", () => { renderSplit(); rememberCentre(); });
  setSplit(50);
}

function bindSyncedScroll() {
  const a = $("pane-before");
  const b = $("pane-after");
  let syncing = null;
  const sync = (from, to) => () => {
    if (syncing && syncing !== from) return;
    syncing = from;
    to.scrollLeft = from.scrollLeft;
    to.scrollTop = from.scrollTop;
    requestAnimationFrame(() => { syncing = null; });
  };
  a.addEventListener("scroll", sync(a, b));
  b.addEventListener("scroll", sync(b, a));
  a.addEventListener("scroll", rememberCentre);
}

// -- "Look inside" -------------------------------------------------------------------------------

function selectTab(tab) {
  const tabs = [$("tab-upscale"), $("tab-inside")];
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  if (tab === $("tab-inside")) {
    $("inside-scale").value = $("scale").value || $("inside-scale").value;
    refreshInside();
  }
}

function bindTabs() {
  const tabs = [$("tab-upscale"), $("tab-inside")];
  for (const t of tabs) {
    t.addEventListener("click", () => selectTab(t));
    t.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const visible = tabs.filter((x) => !x.hidden);
      const i = visible.indexOf(t);
      const next = visible[(i + (event.key === "ArrowRight" ? 1 : visible.length - 1)) % visible.length];
      next.focus();
      selectTab(next);
    });
  }
}

async function refreshInside() {
  if (!state.debugRoutes) return;
  const scale = $("inside-scale").value;
  if (!scale) return;
  $("kernels-json").href = `/kernels/deconv?scale=${scale}`;
  $("kernels-npz").href = `/kernels/deconv?scale=${scale}&format=npz`;
  const kernelsUrl = `/kernels/deconv.png?scale=${scale}`;
  const kernels = $("kernels");
  if (kernels.getAttribute("src") !== kernelsUrl) {
    $("kernels-status").textContent = "Drawing the kernels…";
    kernels.onload = () => { $("kernels-status").textContent = ""; };
    kernels.onerror = () => { $("kernels-status").textContent = "The kernel figure could not be loaded."; };
    kernels.src = kernelsUrl;
    kernels.alt = `Figure of the ×${scale} model's ${scale * scale} sub-pixel convolution kernels and the equivalent deconvolution kernels`;
  }

  const key = `${state.file ? `${state.file.name}:${state.file.size}:${state.file.lastModified}` : "sample"}|${scale}`;
  if (state.channelsFor === key) return;
  state.channelsFor = key;
  const errorBox = $("channels-error");
  errorBox.hidden = true;
  $("channels-status").textContent = "Drawing the channels…";
  let response;
  try {
    if (state.file) {
      const body = new FormData();
      body.append("file", state.file, state.file.name || "image");
      response = await fetch(`/debug/channels?scale=${scale}&format=png`, {method: "POST", body});
    } else {
      response = await fetch(`/debug/channels?scale=${scale}&format=png`);
    }
  } catch (err) {
    $("channels-status").textContent = "";
    errorBox.textContent = `Could not reach the service: ${err.message}`;
    errorBox.hidden = false;
    state.channelsFor = null;
    return;
  }
  if (state.channelsFor !== key) return;  // a newer request took over
  $("channels-status").textContent = "";
  if (!response.ok) {
    errorBox.textContent = `Could not draw the channels (${response.status}): ${await errorText(response)}`;
    errorBox.hidden = false;
    $("channels").removeAttribute("src");
    return;
  }
  if (state.channelsUrl) URL.revokeObjectURL(state.channelsUrl);
  state.channelsUrl = URL.createObjectURL(await response.blob());
  $("channels").src = state.channelsUrl;
  $("channels").alt = `The ${scale * scale} low-resolution channel maps of ${state.file ? "your image" : "the sample image"} ` +
    "before periodic shuffling, which channel feeds which output pixel, and the shuffled high-resolution luma";
  $("channels-source").textContent = state.file
    ? `Your image (${state.file.name || "pasted"}), ×${scale}.`
    : "The service's built-in sample image (choose one on the Upscale tab to see yours).";
}

// -- wiring --------------------------------------------------------------------------------------

function bindInputs() {
  $("file").addEventListener("change", (event) => setFile(event.target.files[0]));
  $("use-sample").addEventListener("click", useSample);
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setFile(file);
  });
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? [...event.clipboardData.items] : [];
    const item = items.find((i) => i.kind === "file");
    const file = item && item.getAsFile();
    if (!file) return;
    event.preventDefault();
    const named = file.name && file.name !== "image.png" ? file
      : new File([file], `pasted.${EXTENSIONS[file.type] || "png"}`, {type: file.type});
    setFile(named);
  });
  $("scale").addEventListener("change", () => { updateScaleHint(); updateButton(); applyZoom(); });
  $("inside-scale").addEventListener("change", refreshInside);
  $("format").addEventListener("change", updateFormatFields);
  $("job-cancel").addEventListener("click", cancelJob);
  $("controls").addEventListener("submit", upscale);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => {
    rememberCentre();
    showViewer(Boolean(state.inputSize || state.resultSize));
  }));
  document.querySelectorAll("input[name=zoom]").forEach((r) => r.addEventListener("change", applyZoom));
}

document.addEventListener("DOMContentLoaded", () => {
  bindInputs();
  bindSlider();
  bindSyncedScroll();
  bindTabs();
  updateFormatFields();
  window.addEventListener("resize", applyZoom);
  loadModels();
});
