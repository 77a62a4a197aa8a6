// The jobqueue admin dashboard: one page, three views (#/, #/jobs?…, #/job/<id>) over the
// JSON API beside it. Every value from the server is put into the page as text (DOM nodes,
// textContent), never as HTML: payloads and errors are other people's input.

const TOKEN_COOKIE = "jobqueue_admin_token";
const OVERVIEW_REFRESH_MS = 5000;
const JOB_REFRESH_MS = 1000;
const STATUSES = ["pending", "processing", "completed", "failed", "cancelled", "expired"];
const FINAL = new Set(["completed", "failed", "cancelled", "expired"]);

const view = document.getElementById("view");
const notice = document.getElementById("notice");
let timer = null;
let shown = 0; // which rendering is current: a slow answer for an old view is dropped

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === TOKEN_COOKIE) return rest.join("=");
  }
  return "";
}

async function api(path, body) {
  const options = { headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-Jobqueue-Admin-Token"] = token();
    options.body = JSON.stringify(body);
  }
  const response = await fetch("api/" + path, options);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error || {};
    const failure = new Error(error.message || `HTTP ${response.status}`);
    failure.status = response.status;
    failure.hint = error.hint;
    throw failure;
  }
  return answer;
}

function say(message, kind = "info") {
  notice.hidden = !message;
  notice.className = kind;
  notice.textContent = message || "";
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  return isNaN(at) ? iso : at.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status, text: status });
}

function jobLink(id) {
  return el("a", { href: `#/job/${encodeURIComponent(id)}`, class: "mono", text: id });
}

function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows),
  );
}

function section(title, ...children) {
  return el("section", { class: "card" }, el("h2", { text: title }), ...children);
}

// -- the chart: completions and failures per minute over the last hour, as SVG ----------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function chart(completed, failed) {
  const width = 600, height = 140, pad = 20;
  const n = completed.length;
  const top = Math.max(1, ...completed.map((c, i) => c + failed[i]));
  const bar = (width - pad) / n;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height + pad}`, class: "chart", role: "img",
    "aria-label": `Jobs finished per minute over the last hour (most ${top})`,
  });
  root.append(svg("line", { x1: pad, y1: height, x2: width, y2: height, class: "axis" }));
  completed.forEach((done, i) => {
    const x = pad + i * bar;
    const hDone = (done / top) * (height - 10);
    const hFail = (failed[i] / top) * (height - 10);
    const title = svg("title", {});
    title.textContent = `${n - i - 1} min ago: ${done} completed, ${failed[i]} failed`;
    const group = svg("g", {});
    group.append(title);
    if (done) group.append(svg("rect", { x, y: height - hDone, width: bar - 1, height: hDone, class: "done" }));
    if (failed[i]) group.append(svg("rect", { x, y: height - hDone - hFail, width: bar - 1, height: hFail, class: "fail" }));
    root.append(group);
  });
  const label = (x, text, anchor) => {
    const t = svg("text", { x, y: height + 15, "text-anchor": anchor, class: "label" });
    t.textContent = text;
    return t;
  };
  const max = svg("text", { x: 0, y: 10, class: "label" });
  max.textContent = String(top);
  root.append(label(pad, "60 min ago", "start"), label(width, "now", "end"), max);
  return root;
}

// -- overview ------------------------------------------------------------------------------

async function showOverview(mine) {
  const data = await api("overview");
  if (mine !== shown) return;
  const totals = el(
    "div", { class: "totals" },
    ...STATUSES.map((s) =>
      el("a", { class: `total ${s}`, href: `#/jobs?status=${s}`, "data-total": s },
        el("span", { class: "count", text: data.totals[s] ?? 0 }), el("span", { text: s }))),
  );
  const queues = table(
    ["queue", ...STATUSES, "oldest pending"],
    data.queues.map((q) =>
      el("tr", { "data-queue": q.queue }, el("td", { text: q.queue }),
        ...STATUSES.map((s) => el("td", { class: "num", text: q.counts[s] ?? 0 })),
        el("td", { class: "num", text: ago(q.oldest_pending_age) }))),
    { id: "queues" },
  );
  const costs = data.cost_today.length
    ? data.cost_today.map((c) => `${c.cost} ${c.unit}`.trim()).join(", ")
    : "nothing yet";
  const facts = el(
    "dl", { class: "facts" },
    el("dt", { text: "Oldest pending" }),
    el("dd", { id: "oldest-pending", text: data.oldest_pending ? `${ago(data.oldest_pending_age)} (${when(data.oldest_pending)})` : "none" }),
    el("dt", { text: "Cost today (UTC)" }), el("dd", { id: "cost-today", text: costs }),
    el("dt", { text: "Live workers" }),
    el("dd", { id: "worker-count", text: data.workers === null ? "unknown" : data.workers.length }),
  );
  const workers = data.workers === null
    ? el("p", { class: "muted", text: "The live-workers table cannot be read." })
    : table(
      ["worker", "host", "pid", "queues", "concurrency", "last beat"],
      data.workers.map((w) =>
        el("tr", {}, el("td", { class: "mono", text: w.worker_id }), el("td", { text: w.host }),
          el("td", { class: "num", text: w.pid }), el("td", { text: w.queues.join(", ") }),
          el("td", { class: "num", text: w.concurrency }), el("td", { text: `${w.beat_age} s ago` }))),
      { id: "workers" },
    );
  const limits = table(
    ["scope", "name", "state", "running", "pending", ""],
    data.limits.map((l) =>
      el("tr", { "data-limit": `${l.scope}:${l.name}` },
        el("td", { text: l.scope }), el("td", { text: l.name }),
        el("td", { text: l.paused ? `paused${l.paused_until ? " until " + when(l.paused_until) : ""}${l.pause_reason ? " — " + l.pause_reason : ""}` : "running" }),
        el("td", { class: "num", text: l.running }), el("td", { class: "num", text: l.pending }),
        el("td", {}, l.paused
          ? el("button", { class: "resume", on: { click: () => act("limits/resume", { scope: l.scope, name: l.name }, `Resumed ${l.scope} ${l.name}`) } }, "Resume")
          : el("button", { class: "secondary pause", on: { click: () => act("limits/pause", { scope: l.scope, name: l.name }, `Paused ${l.scope} ${l.name}`) } }, "Pause")))),
    { id: "limits" },
  );
  const pauseForm = el(
    "form", { id: "pause-form", class: "inline" },
    el("select", { name: "scope", "aria-label": "scope" }, el("option", { value: "queue", text: "queue" }), el("option", { value: "key", text: "limit key" })),
    el("input", { name: "name", placeholder: "name", required: true, "aria-label": "name" }),
    el("input", { name: "minutes", type: "number", min: "1", placeholder: "minutes (empty: until resumed)", "aria-label": "minutes" }),
    el("button", { type: "submit" }, "Pause"),
  );
  pauseForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(pauseForm);
    const body = { scope: form.get("scope"), name: form.get("name") };
    if (form.get("minutes")) body.minutes = Number(form.get("minutes"));
    act("limits/pause", body, `Paused ${body.scope} ${body.name}`);
  });
  view.replaceChildren(
    section("Jobs", totals, queues),
    section("Finished per minute, last hour", chart(data.throughput.completed, data.throughput.failed),
      el("p", { class: "legend" }, el("span", { class: "key done" }), " completed ", el("span", { class: "key fail" }), " failed")),
    section("Now", facts),
    section("Live workers", workers),
    section("Queues and limit keys", data.limits.length ? limits : el("p", { class: "muted", text: "No queue or key has limits or a pause." }), pauseForm),
  );
  view.dataset.view = "overview";
  timer = setTimeout(() => render(mine), OVERVIEW_REFRESH_MS);
}

async function act(path, body, done) {
  try {
    await api(path, body);
    say(done);
  } catch (error) {
    say(`${error.message}${error.hint ? " — " + error.hint : ""}`, "error");
  }
  render();
}

// -- the jobs table ------------------------------------------------------------------------

const FILTERS = ["status", "kind", "queue", "owner", "from", "to"];

async function showJobs(mine, params) {
  const query = new URLSearchParams();
  for (const name of [...FILTERS, "after"]) {
    let value = params.get(name);
    if (value && (name === "from" || name === "to")) value = new Date(value).toISOString();
    if (value) query.set(name, value);
  }
  const data = await api("jobs?" + query);
  if (mine !== shown) return;
  const form = el(
    "form", { id: "filters", class: "inline" },
    el("select", { name: "status", "aria-label": "status" }, el("option", { value: "", text: "any status" }),
      ...STATUSES.map((s) => el("option", { value: s, text: s, selected: params.get("status") === s }))),
    el("input", { name: "kind", placeholder: "kind", value: params.get("kind") || "", "aria-label": "kind" }),
    el("input", { name: "queue", placeholder: "queue", value: params.get("queue") || "", "aria-label": "queue" }),
    el("input", { name: "owner", placeholder: "owner", value: params.get("owner") || "", "aria-label": "owner" }),
    el("label", {}, "from ", el("input", { name: "from", type: "datetime-local", value: params.get("from") || "" })),
    el("label", {}, "to ", el("input", { name: "to", type: "datetime-local", value: params.get("to") || "" })),
    el("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) chosen.set(name, value);
    location.hash = "#/jobs?" + chosen;
  });
  const boxes = [];
  const rows = data.jobs.map((j) => {
    const box = el("input", { type: "checkbox", value: j.id, "aria-label": `select ${j.id}`, disabled: !["failed", "cancelled", "expired"].includes(j.status) });
    boxes.push(box);
    return el("tr", { "data-job-id": j.id },
      el("td", {}, box), el("td", {}, jobLink(j.id)), el("td", {}, badge(j.status)),
      el("td", { text: j.queue }), el("td", { text: j.kind }), el("td", { text: j.owner_id ?? "—" }),
      el("td", { class: "num", text: `${j.attempts}/${j.max_attempts}` }),
      el("td", { text: when(j.created_at) }), el("td", { class: "error", text: j.error ?? "" }));
  });
  const selectAll = el("input", { type: "checkbox", id: "select-all", "aria-label": "select every retryable job on this page" });
  selectAll.addEventListener("change", () => {
    for (const box of boxes) if (!box.disabled) box.checked = selectAll.checked;
  });
  const retrySelected = el("button", { id: "retry-selected" }, "Retry selected");
  retrySelected.addEventListener("click", async () => {
    const ids = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!ids.length) return say("Select failed, cancelled or expired jobs to retry.", "error");
    try {
      const answer = await api("jobs/retry", { ids });
      say(`Retried ${answer.retried.length} of ${ids.length} jobs.`);
    } catch (error) {
      say(error.message, "error");
    }
    render();
  });
  const more = [];
  if (data.next) {
    const next = new URLSearchParams(params);
    next.set("after", data.next);
    more.push(el("a", { id: "next-page", class: "button", href: "#/jobs?" + next }, "Next page →"));
  }
  if (params.get("after")) {
    const first = new URLSearchParams(params);
    first.delete("after");
    more.push(el("a", { class: "button secondary", href: "#/jobs?" + first }, "First page"));
  }
  view.replaceChildren(section(
    "Jobs", form,
    data.jobs.length
      ? table([selectAll, "id", "status", "queue", "kind", "owner", "attempts", "created", "error"], rows, { id: "jobs" })
      : el("p", { class: "muted", id: "no-jobs", text: "No job matches." }),
    el("div", { class: "actions" }, retrySelected, ...more),
  ));
  view.dataset.view = "jobs";
}

// -- one job -------------------------------------------------------------------------------

function facts(pairs) {
  return el("dl", { class: "facts" }, ...pairs.flatMap(([k, v, id]) => [el("dt", { text: k }), el("dd", { text: v ?? "—", id })]));
}

function json(value, id) {
  const parts = [el("pre", { id, text: value.text })];
  if (value.cut) parts.push(el("p", { class: "muted", text: `Cut: ${value.cut} characters in all.` }));
  return parts;
}

async function showJob(mine, id) {
  let job;
  try {
    job = await api(`jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    if (mine !== shown) return;
    view.replaceChildren(section("Job", el("p", { class: "error", text: error.message })));
    return;
  }
  if (mine !== shown) return;
  const buttons = [];
  if (["failed", "cancelled", "expired"].includes(job.status)) {
    buttons.push(el("button", { id: "retry", on: { click: () => act(`jobs/${job.id}/retry`, {}, `Job ${job.id} queued again.`) } }, "Retry"));
  }
  if (job.status === "pending" || job.status === "processing") {
    buttons.push(el("button", { id: "cancel", class: "danger", on: { click: () => act(`jobs/${job.id}/cancel`, {}, `Job ${job.id} cancelled.`) } }, "Cancel"));
  }
  const t = job.timeline;
  const errors = job.errors.length
    ? table(["attempt", "at", "error"], job.errors.map((e) =>
      el("tr", {}, el("td", { class: "num", text: e && e.attempt !== undefined ? e.attempt : "" }),
        el("td", { text: e && e.at ? when(e.at) : "" }),
        el("td", { class: "error", text: e && typeof e === "object" ? e.error ?? JSON.stringify(e) : JSON.stringify(e) }))), { id: "errors" })
    : el("p", { class: "muted", text: "No error so far." });
  view.replaceChildren(
    section(`Job ${job.id}`,
      el("p", {}, badge(job.status), " ", el("span", { id: "attempts", text: `attempt ${job.attempts} of ${job.max_attempts}` })),
      el("div", { class: "actions" }, ...buttons),
      facts([["queue", job.queue], ["kind", job.kind], ["owner", job.owner_id], ["priority", job.priority],
        ["progress", `${job.progress}%${job.progress_message ? " — " + job.progress_message : ""}`],
        ["error", job.error, "job-error"], ["cost", job.cost ? `${job.cost} ${job.cost_unit ?? ""}` : null],
        ["worker", job.locked_by], ["provider task", job.remote_task_id], ["limit key", job.limit_key],
        ["idempotency key", job.idempotency_key], ["unreadable", job.unreadable]])),
    section("Timeline", facts([["created", when(t.created_at)], ["run at", when(t.run_at)],
      ["started", when(t.started_at)], ["lease expires", when(t.lease_expires_at)],
      ["start by", when(t.start_by)], ["finished", when(t.completed_at)], ["updated", when(t.updated_at)]])),
    section("Error history", errors),
    section("Payload", ...json(job.payload, "payload")),
    section("Result", ...json(job.result, "result"), job.result_url ? el("p", { text: `result_url: ${job.result_url}` }) : null),
  );
  view.dataset.view = "job";
  view.dataset.status = job.status;
  if (!FINAL.has(job.status)) timer = setTimeout(() => render(mine), JOB_REFRESH_MS);
}

// -- routing -------------------------------------------------------------------------------

async function render(again) {
  clearTimeout(timer);
  const mine = again ?? ++shown;
  if (again !== undefined && again !== shown) return;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  try {
    if (path.startsWith("/job/")) await showJob(mine, decodeURIComponent(path.slice(5)));
    else if (path === "/jobs") await showJobs(mine, params);
    else await showOverview(mine);
  } catch (error) {
    if (mine !== shown) return;
    say(`${error.message}${error.hint ? " — " + error.hint : ""}`, "error");
    timer = setTimeout(() => render(mine), OVERVIEW_REFRESH_MS);
  }
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("search-id").value.trim();
  if (id) location.hash = `#/job/${encodeURIComponent(id)}`;
});
window.addEventListener("hashchange", () => { say(""); render(); });
render();
