// jobqueue.js: a dependency-free browser client for the jobqueue HTTP API.
//
//   import { generateImageAsync } from "/static/jobqueue.js";
//   const result = await generateImageAsync("a lego castle", { image: fileInput.files[0] });
//   img.src = result.previewUrl;
//
// The API base defaults to the directory above this module (it is served at
// <mount>/static/jobqueue.js), so the client works wherever the host mounted the API.
// Every function takes the same options object:
//   baseUrl       where the API lives (default: next to this module)
//   pollInterval  milliseconds between status checks (default 3000)
//   headers       extra request headers, e.g. { Authorization: "Bearer ..." }
//   credentials   fetch credentials mode (default "same-origin", which sends cookies)
//   signal        an AbortSignal that stops waiting (the job itself keeps running)
//   onUpdate      called with each new job snapshot (status, progress, or its place in line
//                 and estimated wait changed: job.position, job.eta_seconds; see waitText)
//   logger        where the status lines go (default console; null for silence)
//   maxErrors     network errors or 5xx answers in a row that followJob waits out (default 5)
//   expiresIn     seconds (startBy: a Date) a new job may wait for a worker; not started by
//                 then, it ends "expired" (a JobError with code "expired") and never runs
//
// Result URLs come from the image provider, so the client only hands out (and the demo page
// only shows) http(s): and data:image/ URLs; any other (javascript:, data:text/html, ...) is
// dropped from the job snapshot with a console warning.

const DEFAULT_BASE = new URL("..", import.meta.url).href;
const FINAL = new Set(["completed", "failed", "cancelled", "expired"]);

/** "1st", "2nd", "3rd", "4th", "11th", "21st"... */
export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 10 && tens <= 20 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th");
  return `${n}${suffix}`;
}

/** A wait in words: "about 40 s", "about 3 min", "about 2 h". */
export function about(seconds) {
  if (seconds < 1) return "any moment";
  if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `about ${Math.round(seconds / 60)} min`;
  return `about ${Math.round(seconds / 3600)} h`;
}

/**
 * Where a job stands, in words, from the snapshot of GET /jobs/{id} or its event stream:
 * "3rd in line · about 40 s" while it waits (the time until it is done), "about 12 s
 * left" while it runs, "" when there is nothing to say (final, or not known).
 */
export function waitText(job) {
  if (!job) return "";
  if (job.status === "processing") {
    return typeof job.eta_seconds === "number" ? `${about(job.eta_seconds)} left` : "";
  }
  if (job.status !== "pending") return "";
  // Not in the line yet (scheduled for later): the server's words say when it enters.
  if (typeof job.position !== "number") return job.position_text ?? "";
  const place = job.position_more
    ? `more than ${job.position} jobs ahead`
    : `${ordinal(job.position + 1)} in line`;
  return typeof job.eta_seconds === "number" ? `${place} · ${about(job.eta_seconds)}` : place;
}

/**
 * A job that ended failed, cancelled or expired, or a request the API refused. code is the
 * job's status ("expired": not started by its deadline, it never ran) or the API's code.
 */
export class JobError extends Error {
  constructor(message, { job = null, code = null, status = null } = {}) {
    super(message);
    this.name = "JobError";
    this.job = job;
    this.code = code;
    this.status = status;
  }
}

function apiUrl(path, options) {
  const base = options.baseUrl ?? DEFAULT_BASE;
  return new URL(path, base.endsWith("/") ? base : base + "/").href;
}

async function request(method, path, options, body) {
  const init = {
    method,
    headers: { Accept: "application/json", ...(options.headers ?? {}) },
    credentials: options.credentials ?? "same-origin",
    signal: options.signal,
  };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(apiUrl(path, options), init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new JobError(error.message ?? `HTTP ${response.status}`, {
      code: error.code ?? null,
      status: response.status,
    });
  }
  return data;
}

const warned = new Set();

/** ``url`` resolved against ``base`` when it is http(s): or data:image/, else null (with a
 * console warning, once per URL). */
function checkedUrl(url, base) {
  if (typeof url !== "string" || url === "") return null;
  let parsed = null;
  try {
    parsed = new URL(url, base);
  } catch {
    parsed = null;
  }
  const scheme = parsed?.protocol;
  if (scheme === "http:" || scheme === "https:") return parsed.href;
  if (scheme === "data:" && /^data:image\//i.test(parsed.href)) return parsed.href;
  if (!warned.has(url)) {
    warned.add(url);
    console.warn(`jobqueue: dropped a result URL that is not http(s) or data:image/: ${url.slice(0, 80)}`);
  }
  return null;
}

/**
 * A URL safe to put in img.src or a.href: absolute http(s) or a data:image/ URL, else null.
 * Relative URLs (the API's placeholder paths) are resolved against the API base.
 */
export function safeUrl(url, options = {}) {
  return checkedUrl(url, apiUrl("", options));
}

/** The job snapshot with every URL that is not http(s) or data:image/ dropped. */
function cleanJob(job, options) {
  if (!job || typeof job !== "object") return job;
  const base = apiUrl("", options);
  const keep = (url) => checkedUrl(url, base) !== null;
  const images = Array.isArray(job.images) ? job.images.filter(keep) : [];
  const previews = Array.isArray(job.preview_urls) ? job.preview_urls.filter(keep) : [];
  return {
    ...job,
    result_url: keep(job.result_url) ? job.result_url : null,
    images,
    preview_urls: previews,
    preview_url: keep(job.preview_url) ? job.preview_url : (previews[0] ?? null),
  };
}

/** A snapshot as the client hands it out: the API's fields plus camelCase shortcuts.
 * previewUrl is absolute (the API answers a path for its own placeholder images). */
function resultOf(job, options) {
  const clean = cleanJob(job, options);
  return {
    id: clean.id,
    status: clean.status,
    url: safeUrl(clean.result_url, options),
    images: clean.images.map((url) => safeUrl(url, options)),
    previewUrl: safeUrl(clean.preview_url, options),
    job: clean,
  };
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

function settle(job, options) {
  if (job.status === "completed") return resultOf(job, options);
  throw new JobError(job.error || `job ${job.id} ended ${job.status}`, {
    job,
    code: job.status,
  });
}

/** The start deadline of options: expiresIn (seconds) or startBy (a Date or ISO text). */
function deadlineOf(options) {
  const out = {};
  if (options.expiresIn != null) out.expires_in = options.expiresIn;
  if (options.startBy != null) {
    out.start_by =
      options.startBy instanceof Date ? options.startBy.toISOString() : String(options.startBy);
  }
  return out;
}

/**
 * Create a job and return its snapshot at once (HTTP 202).
 * options.image: a File or Blob to upload; options.images: input image URLs;
 * options.model, options.options: passed through; options.idempotencyKey: repeat-safe key;
 * options.expiresIn (seconds) or options.startBy (a Date): the start deadline, after which
 * a job no worker has started ends "expired" instead of running.
 */
export async function createJob(prompt, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
  const opts = { ...options, headers };
  const deadline = deadlineOf(options);
  if (options.image) {
    const form = new FormData();
    form.append("prompt", prompt);
    if (options.model) form.append("model", options.model);
    if (options.options) form.append("options", JSON.stringify(options.options));
    for (const [name, value] of Object.entries(deadline)) form.append(name, String(value));
    form.append("image", options.image);
    return cleanJob(await request("POST", "jobs", opts, form), options);
  }
  const body = { prompt, ...deadline };
  if (options.model) body.model = options.model;
  if (options.images?.length) body.images = options.images;
  if (options.options) body.options = options.options;
  return cleanJob(await request("POST", "jobs", opts, body), options);
}

export async function getJob(id, options = {}) {
  return cleanJob(await request("GET", `jobs/${encodeURIComponent(id)}`, options), options);
}

export async function listJobs(options = {}) {
  const limit = options.limit ? `?limit=${encodeURIComponent(options.limit)}` : "";
  return (await request("GET", `jobs${limit}`, options)).jobs.map((job) => cleanJob(job, options));
}

export async function cancelJob(id, options = {}) {
  const path = `jobs/${encodeURIComponent(id)}/cancel`;
  return cleanJob(await request("POST", path, options), options);
}

/**
 * Follow an existing job by polling until it is final: the resume helper.
 * Logs "⏳ Job <id> status: <status>" on every poll; resolves with the result of a
 * completed job, rejects with a JobError for a failed, cancelled or expired one.
 */
export async function followJob(id, options = {}) {
  const interval = options.pollInterval ?? 3000;
  const logger = options.logger === undefined ? console : options.logger;
  const maxErrors = options.maxErrors ?? 5;
  let seen = null;
  let errors = 0;
  for (;;) {
    let job;
    try {
      job = await getJob(id, options);
      errors = 0;
    } catch (error) {
      // A network blip or a restarting server (5xx) is worth waiting out; a 4xx is final.
      const transient = !(error instanceof JobError) || error.status >= 500;
      if (!transient || options.signal?.aborted || ++errors > maxErrors) throw error;
      logger?.warn?.(`⚠️ Job ${id}: ${error.message}; retrying`);
      await sleep(interval, options.signal);
      continue;
    }
    const wait = waitText(job);
    logger?.log(`⏳ Job ${job.id} status: ${job.status}${wait ? ` · ${wait}` : ""}`);
    const key = [
      job.status,
      job.progress,
      job.progress_message,
      job.position,
      job.position_more,
      job.eta_seconds,
    ].join("/");
    if (key !== seen) {
      seen = key;
      options.onUpdate?.(job);
    }
    if (FINAL.has(job.status)) return settle(job, options);
    await sleep(interval, options.signal);
  }
}

/**
 * Follow a job through the server's event stream (push instead of polling).
 * EventSource cannot send custom headers: use it with cookie sessions, else followJob.
 */
export function watchJob(id, options = {}) {
  return new Promise((resolve, reject) => {
    const url = apiUrl(`jobs/${encodeURIComponent(id)}/events`, options);
    const source = new EventSource(url, { withCredentials: options.credentials === "include" });
    const stop = () => source.close();
    options.signal?.addEventListener(
      "abort",
      () => {
        stop();
        reject(options.signal.reason);
      },
      { once: true },
    );
    source.onmessage = (event) => {
      const job = cleanJob(JSON.parse(event.data), options);
      options.onUpdate?.(job);
      if (FINAL.has(job.status)) {
        stop();
        try {
          resolve(settle(job, options));
        } catch (error) {
          reject(error);
        }
      }
    };
    source.addEventListener("gone", () => {
      stop();
      reject(new JobError(`job ${id} no longer exists`, { code: "not_found", status: 404 }));
    });
    source.onerror = () => {
      // EventSource reconnects by itself after network errors; a closed source means the
      // server refused the stream (404 for another owner's job, 401, 429 for too many open
      // streams, ...). Polling then follows the job, or rejects with the API's own error.
      if (source.readyState === EventSource.CLOSED) {
        followJob(id, { ...options, logger: null }).then(resolve, reject);
      }
    };
  });
}

/**
 * The queued path: create the job, log "📋 Job created: <id>",
 * then poll every options.pollInterval ms (default 3000) logging each status, and
 * resolve with the result ({ id, status, url, images, previewUrl, job }) or reject.
 * options.onCreated(job) is called as soon as the id is known (e.g. to remember it).
 */
export async function generateImageAsync(prompt, options = {}) {
  const logger = options.logger === undefined ? console : options.logger;
  const job = await createJob(prompt, options);
  logger?.log(`📋 Job created: ${job.id}`);
  options.onCreated?.(job);
  return followJob(job.id, options);
}

/**
 * The direct path: one awaited call that returns the result, without status logging.
 * It still goes through the queue (create the job, then wait for it on the server's
 * event stream, or by quiet polling when custom headers are needed or EventSource is
 * missing), so a slow generation never hits an HTTP timeout.
 */
export async function generateImage(prompt, options = {}) {
  const job = await createJob(prompt, options);
  options.onCreated?.(job);
  if (typeof EventSource === "function" && !options.headers) {
    return watchJob(job.id, options);
  }
  return followJob(job.id, { ...options, logger: null });
}
