// maskserve playground: decoding masks (COCO RLE) and drawing them and the prompt over the image.
import { MASK_RGBA, $, state } from "./state.js";

// ---- masks and drawing ----------------------------------------------------------------------

// COCO compressed RLE (column-major run lengths, as pycocotools writes them) to a row-major 0/1 mask.
export function decodeRle(rle) {
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

export function paintMasks(layers, overlay = $("overlay")) {
  // layers: [{mask, rgba}], painted in order (later ones win where they overlap)
  const context = overlay.getContext("2d");
  const image = context.createImageData(overlay.width, overlay.height);
  const data = image.data;
  for (const { mask, rgba } of layers) {
    for (let i = 0; i < mask.length; i += 1) {
      if (mask[i]) data.set(rgba, i * 4);
    }
  }
  context.putImageData(image, 0, 0);
}

export function colour(index) {
  const hue = (index * 137.508) % 360;
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (0.5 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4), 150];
}

export function showMask(entry) {
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

// A pointer event on a canvas drawn at any scale, in the canvas's own pixels (clamped inside it).
export function canvasPoint(event, canvas) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.round(((event.clientX - rect.left) * canvas.width) / rect.width);
  const y = Math.round(((event.clientY - rect.top) * canvas.height) / rect.height);
  return [Math.min(Math.max(x, 0), canvas.width - 1), Math.min(Math.max(y, 0), canvas.height - 1)];
}

// Clears a marks canvas and readies its pen; returns the context and the mark radius for its size.
export function clearMarks(canvas) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const radius = Math.max(4, Math.round(Math.max(canvas.width, canvas.height) / 120));
  context.lineWidth = Math.max(2, radius / 3);
  return [context, radius];
}

// Points as dots: green for foreground (label 1), red for background.
export function drawPoints(context, radius, points, labels) {
  points.forEach(([x, y], i) => {
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fillStyle = labels[i] ? "#12b76a" : "#f04438";
    context.fill();
    context.strokeStyle = "#fff";
    context.stroke();
  });
}

export function drawMarks(preview = null) {
  const [context, radius] = clearMarks($("marks"));
  const box = preview || state.prompt.box;
  if (box) {
    context.strokeStyle = "#ffbf00";
    context.setLineDash(preview ? [radius, radius] : []);
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    context.setLineDash([]);
  }
  drawPoints(context, radius, state.prompt.points, state.prompt.labels);
}
