// maskserve playground: what the page holds (the API key in sessionStorage only, the image, the prompt).

export const KEY_STORAGE = "maskserve.apiKey";
export const DRAG_THRESHOLD_PX = 6;
export const MASK_RGBA = [31, 111, 235, 140];

export const $ = (id) => document.getElementById(id);

export const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  file: null,
  imageId: null, // the image's handle once uploaded: later clicks send it instead of the file
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

export function emptyPrompt() {
  return { points: [], labels: [], box: null };
}

export function copyPrompt(prompt) {
  return { points: prompt.points.map((p) => [...p]), labels: [...prompt.labels], box: prompt.box && [...prompt.box] };
}
