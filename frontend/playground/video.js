// maskserve playground, video tab: upload a video once, click on any frame, propagate, scrub, correct.
// Frames are shown by this browser's own decoder (the file never comes back from the server); masks are
// the API's answers: a prompt's mask at once, every frame's masks from the propagation's JSON result.
import { $, state as page } from "./state.js";
import { call, fetchFile, getJson, saveBlob, setStatus, fail } from "./api.js";
import { canvasPoint, clearMarks, decodeRle, drawPoints, paintMasks, colour } from "./masks.js";

const POLL_MS = 400;

const video = {
  file: null,
  id: null, // vid_…
  frames: 0,
  width: 0,
  height: 0,
  fps: 0,
  frame: 0, // the frame shown
  masks: new Map(), // frame -> Map(object_id -> {mask, jobId})
  clicks: new Map(), // frame -> {points: [[x, y]], labels: [label]} (what this page sent, all objects)
  propagation: null, // {jobId, previewUrl}
  busy: false,
  playable: true, // false when this browser cannot decode the file: masks still show on a plain frame
};

function frameMasks(frame) {
  if (!video.masks.has(frame)) video.masks.set(frame, new Map());
  return video.masks.get(frame);
}

function objectId() {
  const value = Number($("object-id").value);
  return Number.isInteger(value) && value >= 1 && value <= 16 ? value : null;
}

// ---- the video and its frames ---------------------------------------------------------------

async function useVideo(file) {
  if (!file) return;
  if (!page.key) return setStatus("Paste an API key first.", true);
  if (video.busy) return setStatus("Wait for the running request to end.", true);
  video.busy = true;
  setStatus(`Uploading ${file.name}`, false, true);
  let body;
  try {
    body = await call("/v1/videos", new URLSearchParams(), [["file", file, file.name]]);
  } catch (problem) {
    fail(problem);
    return;
  } finally {
    video.busy = false;
  }
  Object.assign(video, {
    file,
    id: body.video_id,
    frames: body.frames,
    width: body.width,
    height: body.height,
    fps: body.fps,
    masks: new Map(),
    clicks: new Map(),
    propagation: null,
    playable: true,
  });
  for (const id of ["frame-layer", "video-overlay", "video-marks"]) {
    $(id).width = video.width;
    $(id).height = video.height;
  }
  const source = $("video-source");
  if (source.src.startsWith("blob:")) URL.revokeObjectURL(source.src);
  source.src = URL.createObjectURL(file);
  $("frame").max = String(video.frames - 1);
  $("frame").value = "0";
  $("frame-count").textContent = String(video.frames);
  $("video-info").textContent =
    `${body.video_id}: ${video.frames} frames, ${video.width}×${video.height} at ${video.fps} fps (expires ${body.expires_at})`;
  $("video-overlay").dataset.videoId = body.video_id;
  $("progress").hidden = true;
  $("progress-text").textContent = "";
  $("video-wrap").hidden = false;
  await showFrame(0);
  setStatus(`${file.name}: ${video.frames} frames. Click an object on any frame.`);
}

function seek(source, time) {
  return new Promise((resolve, reject) => {
    const done = () => {
      source.removeEventListener("seeked", done);
      source.removeEventListener("error", failed);
      resolve();
    };
    const failed = () => {
      source.removeEventListener("seeked", done);
      source.removeEventListener("error", failed);
      reject(new Error("not decodable here"));
    };
    source.addEventListener("seeked", done);
    source.addEventListener("error", failed);
    source.currentTime = time;
  });
}

async function ready(source) {
  if (source.readyState >= 1) return;
  await new Promise((resolve, reject) => {
    source.addEventListener("loadedmetadata", resolve, { once: true });
    source.addEventListener("error", reject, { once: true });
  });
}

async function drawFrame(frame) {
  const context = $("frame-layer").getContext("2d");
  if (video.playable) {
    const source = $("video-source");
    try {
      await ready(source);
      // frame k of the kept frames lies at k / fps; its middle avoids landing on the frame before
      await seek(source, Math.min((frame + 0.5) / video.fps, Math.max(source.duration - 1e-3, 0)));
      context.drawImage(source, 0, 0, video.width, video.height);
      return;
    } catch {
      video.playable = false;
    }
  }
  context.fillStyle = "#3b4450";
  context.fillRect(0, 0, video.width, video.height);
  context.fillStyle = "#d8e1ea";
  context.font = `${Math.max(12, Math.round(video.height / 20))}px system-ui, sans-serif`;
  context.fillText(`frame ${frame} (this browser cannot show this file)`, 12, video.height / 2);
}

async function showFrame(frame) {
  video.frame = frame;
  $("frame-number").textContent = String(frame);
  $("video-overlay").dataset.frame = "";
  paintFrame(frame); // masks at once, the picture when the browser has sought
  await drawFrame(frame);
  if (video.frame === frame) $("video-overlay").dataset.frame = String(frame);
}

function paintFrame(frame) {
  const overlay = $("video-overlay");
  const shown = [...frameMasks(frame).entries()].sort((a, b) => a[0] - b[0]);
  paintMasks(
    shown.map(([obj, entry]) => ({ mask: entry.mask, rgba: colour(obj - 1) })),
    overlay,
  );
  overlay.dataset.objects = shown.map(([obj]) => obj).join(",");
  overlay.dataset.jobId = shown.length ? shown.map(([, entry]) => entry.jobId).join(",") : "";
  drawClicks(frame);
}

function drawClicks(frame) {
  const [context, radius] = clearMarks($("video-marks"));
  const sent = video.clicks.get(frame);
  if (sent) drawPoints(context, radius, sent.points, sent.labels);
}

// ---- prompts --------------------------------------------------------------------------------

async function addPoint(x, y, label) {
  const obj = objectId();
  if (obj === null) return setStatus("The object is a number from 1 to 16.", true);
  if (video.busy) return setStatus("Wait for the running request to end.", true);
  const frame = video.frame;
  const params = new URLSearchParams({
    frame: String(frame),
    object_id: String(obj),
    points: JSON.stringify([[x, y]]),
    labels: JSON.stringify([label]),
  });
  video.busy = true;
  setStatus(`Object ${obj} on frame ${frame}`, false, true);
  try {
    const body = await call(`/v1/videos/${video.id}/prompts`, params, []);
    if (!video.clicks.has(frame)) video.clicks.set(frame, { points: [], labels: [] });
    video.clicks.get(frame).points.push([x, y]);
    video.clicks.get(frame).labels.push(label);
    frameMasks(frame).set(obj, { mask: decodeRle(body.mask), jobId: body.job_id });
    if (video.frame === frame) paintFrame(frame);
    setStatus(`Object ${obj} on frame ${frame}: area ${body.area} px, score ${body.score.toFixed(3)}. Propagate when ready.`);
  } catch (problem) {
    fail(problem);
  } finally {
    video.busy = false;
  }
}

function onPointerUp(event) {
  if (!video.id || (event.button !== 0 && event.button !== 2)) return;
  event.preventDefault();
  const [x, y] = canvasPoint(event, $("video-marks"));
  addPoint(x, y, event.button === 0 ? 1 : 0);
}

// ---- propagation ----------------------------------------------------------------------------

function showProgress(progress) {
  const bar = $("progress");
  bar.hidden = false;
  bar.max = Math.max(progress.frames_total, 1);
  bar.value = progress.frames_done;
  $("progress-text").textContent = `${progress.frames_done} of ${progress.frames_total} frames`;
}

async function propagate() {
  if (!video.id) return setStatus("Upload a video first.", true);
  if (video.busy) return setStatus("Wait for the running request to end.", true);
  const params = new URLSearchParams({ direction: $("direction").value });
  if ($("from-frame").checked) params.set("start_frame", String(video.frame));
  video.busy = true;
  $("video-overlay").dataset.propagation = "running";
  setStatus("Propagating", false, true);
  try {
    let job = await call(`/v1/videos/${video.id}/propagate`, params, []);
    $("video-overlay").dataset.propagationJob = job.job_id;
    showProgress(job.progress);
    while (job.status === "pending" || job.status === "processing") {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await getJson(`/v1/jobs/${job.job_id}`);
      showProgress(job.progress);
    }
    const result = JSON.parse(await (await fetchFile(job.output_url)).text());
    for (const { frame, objects } of result.frames) {
      for (const object of objects) frameMasks(frame).set(object.object_id, { mask: decodeRle(object.mask), jobId: job.job_id });
    }
    video.propagation = { jobId: job.job_id, previewUrl: job.preview_url };
    paintFrame(video.frame);
    $("video-overlay").dataset.propagation = "done";
    setStatus(`${result.frames.length} frames tracked (${job.credits_used} credits). Scrub through them, correct, propagate again.`);
  } catch (problem) {
    $("video-overlay").dataset.propagation = "failed";
    fail(problem);
  } finally {
    video.busy = false;
  }
}

async function downloadPreview() {
  if (!video.propagation) return setStatus("Propagate first: the preview shows the tracked masks.", true);
  try {
    const blob = await fetchFile(video.propagation.previewUrl);
    const ext = blob.type === "video/webm" ? "webm" : "mp4";
    const stem = (video.file.name || "video").replace(/\.[^.]*$/, "") || "video";
    saveBlob(blob, `${stem}-preview.${ext}`);
  } catch (problem) {
    fail(problem);
  }
}

// ---- wiring ---------------------------------------------------------------------------------

function showTab(name) {
  const isVideo = name === "video";
  for (const [id, hidden] of [
    ["image-controls", isVideo],
    ["image-stage", isVideo],
    ["video-controls", !isVideo],
    ["video-stage", !isVideo],
  ]) {
    $(id).hidden = hidden;
  }
  $("tab-image").setAttribute("aria-selected", String(!isVideo));
  $("tab-video").setAttribute("aria-selected", String(isVideo));
  if (isVideo && !video.id) setStatus("Choose a video: MP4, WebM, MOV or an animated GIF/WebP.");
}

export function initVideo() {
  $("tab-image").addEventListener("click", () => showTab("image"));
  $("tab-video").addEventListener("click", () => showTab("video"));
  $("video-file").addEventListener("change", (event) => useVideo(event.target.files[0]));
  $("frame").addEventListener("input", () => showFrame(Number($("frame").value)));
  const marks = $("video-marks");
  marks.addEventListener("pointerup", onPointerUp);
  marks.addEventListener("contextmenu", (event) => event.preventDefault());
  $("propagate").addEventListener("click", propagate);
  $("download-preview").addEventListener("click", downloadPreview);
}
