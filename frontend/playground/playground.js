// maskserve playground: click to segment, through the public API of the server that serves this page.
// No build step and no third-party code. The API key stays in this tab's sessionStorage.
"use strict";

const KEY_STORAGE = "maskserve.apiKey";
const DRAG_THRESHOLD_PX = 6;
const MASK_RGBA = [31, 111, 235, 140];

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  file: null,
  width: 0,
  height: 0,
  bitmap: null,
  prompt: emptyPrompt(),
  history: [], // committed segmentations: {prompt, jobId, outputUrl, mask}
  shown: null, // what the overlay shows: {kind: "mask" | "everything", outputUrl}
  cutout: null, // {blob, ext}
  busy: false,
  dirty: false,
  pointer: null, // an unfinished click or drag
};

function emptyPrompt() {
  return { points: [], labels: [], box: null };
}

function copyPrompt(prompt) {
  return { points: prompt.points.map((p) => [...p]), labels: [...prompt.labels], box: prompt.box && [...prompt.box] };
}

// ---- talking to the API -------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "playground-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function describeDetail(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return String(detail ?? "");
}

function sameOrigin(url) {
  // Signed links may name a public host; the page fetches them from its own origin (CSP: connect-src 'self').
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}

function shellQuote(text) {
  return "'" + String(text).replace(/'/g, "'\\''") + "'";
}

function showCurl(path, params, fields) {
  const url = `${location.origin}${path}${params.toString() ? "?" + params.toString() : ""}`;
  const lines = [`curl -sS -X POST ${shellQuote(url)}`, `  -H "Authorization: Bearer $MASKSERVE_API_KEY"`];
  for (const [name, fileName] of fields) lines.push(`  -F ${shellQuote(`${name}=@${fileName}`)}`);
  $("curl").textContent = lines.join(" \\\n");
}

function showTiming(header) {
  const body = $("timing").tBodies[0];
  body.replaceChildren();
  for (const part of (header || "").split(",")) {
    const [name, ...fields] = part.trim().split(";");
    if (!name) continue;
    const values = Object.fromEntries(fields.map((f) => f.trim().split("=")));
    const row = body.insertRow();
    row.insertCell().textContent = values.desc ? `${name} (${values.desc.replace(/"/g, "")})` : name;
    const dur = row.insertCell();
    dur.className = "dur";
    dur.textContent = values.dur !== undefined ? `${Number(values.dur).toFixed(1)} ms` : "";
  }
}

function showCredits(value) {
  if (value !== null && value !== undefined && value !== "") $("credits").textContent = String(value);
}

async function call(path, params, fields) {
  if (!state.key) throw new ApiProblem(401, "Paste an API key first.");
  const body = new FormData();
  for (const [name, blob, fileName] of fields) body.append(name, blob, fileName);
  showCurl(path, params, fields.map(([name, , fileName]) => [name, fileName]));
  const response = await fetch(`${path}?${params}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${state.key}`, "Idempotency-Key": idempotencyKey() },
    body,
  });
  return readResponse(response);
}

async function readResponse(response) {
  showCredits(response.headers.get("X-Credits-Remaining"));
  if (response.headers.has("Server-Timing")) showTiming(response.headers.get("Server-Timing"));
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    let message = describeDetail(payload && payload.detail) || `HTTP ${response.status}`;
    if (response.status === 429) message += ` (try again in ${response.headers.get("Retry-After") || "a few"} s)`;
    throw new ApiProblem(response.status, message);
  }
  if (payload && payload.status === "failed") throw new ApiProblem(response.status, payload.error || "The job failed");
  return payload;
}

async function fetchFile(outputUrl) {
  const response = await fetch(sameOrigin(outputUrl));
  if (!response.ok) {
    let detail = "";
    try {
      detail = describeDetail((await response.json()).detail);
    } catch {
      detail = `HTTP ${response.status}`;
    }
    throw new ApiProblem(response.status, detail);
  }
  return response.blob();
}

async function loadAccount() {
  if (!state.key) return;
  const response = await fetch("/v1/account", { headers: { Authorization: `Bearer ${state.key}` } });
  try {
    const account = await readResponse(response);
    showCredits(account.credits);
    $("account").textContent = `Key ${account.key_prefix}… (${account.name})`;
    setStatus(state.file ? "Click the image to segment." : "Choose or drop an image.");
  } catch (problem) {
    $("account").textContent = "";
    fail(problem);
  }
}

async function loadReadiness() {
  try {
    const ready = await (await fetch("/readyz")).json();
    const models = [...new Set((ready.models || []).map((m) => `${m.model || m.name}/${m.version}`))].join(", ");
    if (ready.random_weights) {
      const notice = $("weights");
      notice.textContent = `This server runs random weights (${models}): its masks are not meaningful.`;
      notice.hidden = false;
    }
  } catch {
    // readiness is informative only
  }
}

// ---- status line ----------------------------------------------------------------------------

function setStatus(text, isError = false, busy = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.classList.toggle("busy", busy);
}

function fail(problem) {
  setStatus(problem instanceof ApiProblem ? `${problem.status}: ${problem.message}` : String(problem), true);
}

// ---- masks and drawing ----------------------------------------------------------------------

// COCO compressed RLE (column-major run lengths, as pycocotools writes them) to a row-major 0/1 mask.
function decodeRle(rle) {
  const [height, width] = rle.size;
  const text = rle.counts;
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p += 1;
      k += 1;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(height * width);
  let index = 0;
  let value = 0;
  for (const run of counts) {
    if (value) {
      for (let i = index; i < index + run; i += 1) {
        const column = Math.floor(i / height);
        mask[(i - column * height) * width + column] = 1;
      }
    }
    index += run;
    value ^= 1;
  }
  return mask;
}

function paintMasks(layers) {
  // layers: [{mask, rgba}], painted in order (later ones win where they overlap)
  const overlay = $("overlay");
  const context = overlay.getContext("2d");
  const image = context.createImageData(state.width, state.height);
  const data = image.data;
  for (const { mask, rgba } of layers) {
    for (let i = 0; i < mask.length; i += 1) {
      if (mask[i]) data.set(rgba, i * 4);
    }
  }
  context.putImageData(image, 0, 0);
}

function colour(index) {
  const hue = (index * 137.508) % 360;
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (0.5 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4), 150];
}

function showMask(entry) {
  const overlay = $("overlay");
  if (!entry) {
    paintMasks([]);
    state.shown = null;
    overlay.dataset.kind = "";
    overlay.dataset.jobId = "";
    $("mask-info").textContent = "";
    return;
  }
  paintMasks([{ mask: entry.mask, rgba: MASK_RGBA }]);
  state.shown = { kind: "mask", outputUrl: entry.outputUrl };
  overlay.dataset.kind = "mask";
  overlay.dataset.jobId = entry.jobId;
  const area = entry.mask.reduce((sum, v) => sum + v, 0);
  $("mask-info").textContent = `Job ${entry.jobId}: score ${entry.score?.toFixed(3) ?? "–"}, area ${area} px`;
}

function drawMarks(preview = null) {
  const marks = $("marks");
  const context = marks.getContext("2d");
  context.clearRect(0, 0, marks.width, marks.height);
  const radius = Math.max(4, Math.round(Math.max(state.width, state.height) / 120));
  context.lineWidth = Math.max(2, radius / 3);
  const box = preview || state.prompt.box;
  if (box) {
    context.strokeStyle = "#ffbf00";
    context.setLineDash(preview ? [radius, radius] : []);
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    context.setLineDash([]);
  }
  state.prompt.points.forEach(([x, y], i) => {
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fillStyle = state.prompt.labels[i] ? "#12b76a" : "#f04438";
    context.fill();
    context.strokeStyle = "#fff";
    context.stroke();
  });
}

// ---- the image ------------------------------------------------------------------------------

async function useFile(file) {
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    setStatus(`${file.name}: not an image this browser can read (JPEG, PNG or WebP).`, true);
    return;
  }
  state.file = file;
  state.bitmap = bitmap;
  state.width = bitmap.width;
  state.height = bitmap.height;
  state.prompt = emptyPrompt();
  state.history = [];
  state.cutout = null;
  for (const id of ["image-layer", "overlay", "marks"]) {
    $(id).width = state.width;
    $(id).height = state.height;
  }
  $("image-layer").getContext("2d").drawImage(bitmap, 0, 0);
  $("canvas-wrap").hidden = false;
  $("cutout-figure").hidden = true;
  showMask(null);
  drawMarks();
  setStatus(`${file.name}: ${state.width}×${state.height}. Click the object you want.`);
}

function fileName() {
  return state.file ? state.file.name || "image" : "image";
}

function stem() {
  return fileName().replace(/\.[^.]*$/, "") || "image";
}

// ---- segmentation with refinement -----------------------------------------------------------

async function segment() {
  if (state.busy) {
    state.dirty = true; // the newest prompt is sent when the running request ends
    return;
  }
  state.busy = true;
  try {
    do {
      state.dirty = false;
      const prompt = copyPrompt(state.prompt);
      const previous = state.history.at(-1);
      const params = new URLSearchParams();
      if (prompt.points.length) {
        params.set("points", JSON.stringify(prompt.points));
        params.set("labels", JSON.stringify(prompt.labels));
      }
      if (prompt.box) params.set("box", JSON.stringify(prompt.box));
      if (previous) params.set("previous_job_id", previous.jobId);
      params.set("mask_format", "rle");
      setStatus(previous ? "Refining the mask" : "Segmenting", false, true);
      let body;
      try {
        body = await call("/v1/services/image-segmentation", params, [["file", state.file, fileName()]]);
      } catch (problem) {
        state.prompt = previous ? copyPrompt(previous.prompt) : emptyPrompt(); // the failed click is dropped
        drawMarks();
        fail(problem);
        return;
      }
      const result = body.result;
      const entry = {
        prompt,
        jobId: result.job_id,
        outputUrl: result.output_url,
        score: result.score,
        mask: decodeRle(result.mask),
      };
      state.history.push(entry);
      showMask(entry);
      setStatus(`Mask ${state.history.length} ready. Click again to refine, or extract it.`);
    } while (state.dirty);
  } finally {
    state.busy = false;
  }
}

function release() {
  // everything() and extract() hold the page too: a click made meanwhile is sent now
  state.busy = false;
  if (state.dirty) segment();
}

function addPoint(x, y, label) {
  state.prompt.points.push([x, y]);
  state.prompt.labels.push(label);
  drawMarks();
  segment();
}

function setBox(box) {
  state.prompt.box = box;
  drawMarks();
  segment();
}

function undo() {
  if (state.busy || !state.history.length) return;
  state.history.pop();
  const last = state.history.at(-1);
  state.prompt = last ? copyPrompt(last.prompt) : emptyPrompt();
  showMask(last);
  drawMarks();
  setStatus(last ? `Back to mask ${state.history.length}.` : "Cleared. Click the object you want.");
}

function clearPrompt() {
  if (state.busy) return;
  state.history = [];
  state.prompt = emptyPrompt();
  showMask(null);
  drawMarks();
  setStatus("Cleared. Click the object you want.");
}

function imagePoint(event) {
  const rect = $("marks").getBoundingClientRect();
  const x = Math.round(((event.clientX - rect.left) * state.width) / rect.width);
  const y = Math.round(((event.clientY - rect.top) * state.height) / rect.height);
  return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
}

function orderedBox(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

function onPointerDown(event) {
  if (!state.file || (event.button !== 0 && event.button !== 2)) return;
  event.preventDefault();
  $("marks").setPointerCapture(event.pointerId);
  state.pointer = { button: event.button, start: imagePoint(event), client: [event.clientX, event.clientY], drag: false };
}

function onPointerMove(event) {
  const pointer = state.pointer;
  if (!pointer || pointer.button !== 0) return;
  const moved = Math.hypot(event.clientX - pointer.client[0], event.clientY - pointer.client[1]);
  if (moved >= DRAG_THRESHOLD_PX) pointer.drag = true;
  if (pointer.drag) drawMarks(orderedBox(pointer.start, imagePoint(event)));
}

function onPointerUp(event) {
  const pointer = state.pointer;
  state.pointer = null;
  if (!pointer) return;
  if (!state.key) {
    setStatus("Paste an API key first.", true);
    drawMarks();
    return;
  }
  if (pointer.drag) {
    const box = orderedBox(pointer.start, imagePoint(event));
    if (box[2] > box[0] && box[3] > box[1]) setBox(box);
    else drawMarks();
    return;
  }
  addPoint(pointer.start[0], pointer.start[1], pointer.button === 0 ? 1 : 0);
}

// ---- segment everything ---------------------------------------------------------------------

async function everything() {
  if (!state.file) return setStatus("Choose an image first.", true);
  if (state.busy) return;
  const params = new URLSearchParams({
    points_per_side: $("points-per-side").value,
    pred_iou_thresh: $("pred-iou").value,
    stability_score_thresh: $("stability").value,
    mask_format: "rle",
  });
  state.busy = true;
  setStatus("Segmenting everything", false, true);
  try {
    const body = await call("/v1/services/image-segmentation/everything", params, [["file", state.file, fileName()]]);
    const masks = body.result.masks;
    paintMasks(masks.map((m, i) => ({ mask: decodeRle(m.mask), rgba: colour(i) })));
    state.shown = { kind: "everything", outputUrl: body.result.output_url };
    const overlay = $("overlay");
    overlay.dataset.kind = "everything";
    overlay.dataset.jobId = body.result.job_id;
    overlay.dataset.count = String(masks.length);
    const found = `${masks.length} mask${masks.length === 1 ? "" : "s"}`;
    $("mask-info").textContent = `Job ${body.result.job_id}: ${found} (download gives the label map).`;
    setStatus(`${found} found. Click to go back to prompting.`);
  } catch (problem) {
    fail(problem);
  } finally {
    release();
  }
}

// ---- extraction and downloads ---------------------------------------------------------------

async function extract() {
  const last = state.history.at(-1);
  if (!last) return setStatus("Click the object first: the cut-out uses the mask you see.", true);
  if (state.busy) return;
  const format = $("output-format").value;
  const params = new URLSearchParams({ feather: $("feather").value, output_format: format });
  if ($("use-bg").checked) params.set("bg_color", $("bg-color").value);
  if ($("crop").checked) {
    params.set("crop", "true");
    params.set("crop_margin", $("crop-margin").value);
  }
  state.busy = true;
  setStatus("Extracting", false, true);
  try {
    const mask = await fetchFile(last.outputUrl);
    const body = await call("/v1/services/object-extraction", params, [
      ["image", state.file, fileName()],
      ["mask", mask, `${stem()}-mask.png`],
    ]);
    const blob = await fetchFile(body.result.output_url);
    state.cutout = { blob, ext: format === "jpeg" ? "jpg" : format };
    const image = $("cutout");
    if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(blob);
    image.dataset.jobId = body.result.job_id;
    $("cutout-info").textContent =
      `Job ${body.result.job_id}: ${body.result.output_width}×${body.result.output_height} ${format.toUpperCase()}, ${blob.size} bytes`;
    $("cutout-figure").hidden = false;
    setStatus("Cut-out ready.");
  } catch (problem) {
    fail(problem);
  } finally {
    release();
  }
}

function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function downloadMask() {
  if (!state.shown) return setStatus("No mask yet.", true);
  try {
    const suffix = state.shown.kind === "everything" ? "labels" : "mask";
    saveBlob(await fetchFile(state.shown.outputUrl), `${stem()}-${suffix}.png`);
  } catch (problem) {
    fail(problem);
  }
}

function downloadCutout() {
  if (!state.cutout) return setStatus("Extract the object first.", true);
  saveBlob(state.cutout.blob, `${stem()}-cutout.${state.cutout.ext}`);
}

async function copyCurl() {
  const text = $("curl").textContent;
  try {
    await navigator.clipboard.writeText(text);
    setStatus("curl command copied.");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("curl"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setStatus("Selected: press Ctrl+C to copy.");
  }
}

// ---- wiring ---------------------------------------------------------------------------------

function init() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadAccount();
  });
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => {
    event.preventDefault();
    stage.classList.add("dragging");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  const marks = $("marks");
  marks.addEventListener("pointerdown", onPointerDown);
  marks.addEventListener("pointermove", onPointerMove);
  marks.addEventListener("pointerup", onPointerUp);
  marks.addEventListener("contextmenu", (event) => event.preventDefault());
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearPrompt);
  $("everything").addEventListener("click", everything);
  $("extract").addEventListener("click", extract);
  $("download-mask").addEventListener("click", downloadMask);
  $("download-cutout").addEventListener("click", downloadCutout);
  $("copy-curl").addEventListener("click", copyCurl);
  $("feather").addEventListener("input", () => {
    $("feather-value").textContent = $("feather").value;
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "z") undo();
  });
  loadReadiness();
  if (state.key) loadAccount();
}

init();
