// maskserve playground: click to segment, through the public API of the server that serves this page.
// No build step and no third-party code. The API key stays in this tab's sessionStorage.
import { KEY_STORAGE, DRAG_THRESHOLD_PX, $, state, emptyPrompt, copyPrompt } from "./state.js";
import { callOnImage, fetchFile, loadAccount, loadReadiness, saveBlob, setStatus, fail } from "./api.js";
import { canvasPoint, decodeRle, paintMasks, colour, showMask, drawMarks } from "./masks.js";
import { initVideo } from "./video.js";

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
  state.imageId = null; // a new image: its first request uploads it
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
        body = await callOnImage("/v1/services/image-segmentation", params, "file", fileName());
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
  return canvasPoint(event, $("marks"));
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
    const body = await callOnImage("/v1/services/image-segmentation/everything", params, "file", fileName());
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
    const body = await callOnImage("/v1/services/object-extraction", params, "image", fileName(), [
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
  initVideo();
  loadReadiness();
  if (state.key) loadAccount();
}

init();
