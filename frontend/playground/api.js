// maskserve playground: talking to the API of the server that serves this page, and the status line.
import { $, state } from "./state.js";

// ---- talking to the API -------------------------------------------------------------------

export class ApiProblem extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "playground-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function describeDetail(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return String(detail ?? "");
}

export function sameOrigin(url) {
  // Signed links may name a public host; the page fetches them from its own origin (CSP: connect-src 'self').
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}

export function shellQuote(text) {
  return "'" + String(text).replace(/'/g, "'\\''") + "'";
}

export function showCurl(path, params, fields) {
  const url = `${location.origin}${path}${params.toString() ? "?" + params.toString() : ""}`;
  const lines = [`curl -sS -X POST ${shellQuote(url)}`, `  -H "Authorization: Bearer $MASKSERVE_API_KEY"`];
  for (const [name, fileName] of fields) lines.push(`  -F ${shellQuote(`${name}=@${fileName}`)}`);
  $("curl").textContent = lines.join(" \\\n");
}

export function showTiming(header) {
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

export function showCredits(value) {
  if (value !== null && value !== undefined && value !== "") $("credits").textContent = String(value);
}

export async function call(path, params, fields) {
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

export async function getJson(path) {
  if (!state.key) throw new ApiProblem(401, "Paste an API key first.");
  return readResponse(await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } }));
}

const UNKNOWN_IMAGE = "Unknown or expired image_id";

// A call on the current image: the file the first time, then only its handle (image_id). A handle that
// expired is answered 404: the file is sent again, once, and its new handle kept.
export async function callOnImage(path, params, imageField, fileName, moreFields = []) {
  if (state.imageId) {
    const byHandle = new URLSearchParams(params);
    byHandle.set("image_id", state.imageId);
    try {
      return await call(path, byHandle, moreFields);
    } catch (problem) {
      if (!(problem instanceof ApiProblem && problem.status === 404 && problem.message === UNKNOWN_IMAGE)) throw problem;
      state.imageId = null;
    }
  }
  const body = await call(path, params, [[imageField, state.file, fileName], ...moreFields]);
  if (body && body.result && body.result.image_id) state.imageId = body.result.image_id;
  return body;
}

export async function readResponse(response) {
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

export async function fetchFile(outputUrl) {
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

export function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

export async function loadAccount() {
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

export async function loadReadiness() {
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

export function setStatus(text, isError = false, busy = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.classList.toggle("busy", busy);
}

export function fail(problem) {
  setStatus(problem instanceof ApiProblem ? `${problem.status}: ${problem.message}` : String(problem), true);
}
