// The demo page: create a job, follow it, show the image, list recent jobs.
// Running job ids live in localStorage, so a reload (or a closed and reopened tab) picks
// them up again and follows them to the end.

import {
  cancelJob,
  followJob,
  generateImageAsync,
  listJobs,
  safeUrl,
  waitText,
} from "./jobqueue.js";

const STORE_KEY = "jobqueue.running";
const pollInterval = Number(document.body.dataset.pollInterval) || 3000;
const $ = (id) => document.getElementById(id);

let currentId = null;

// -- remembered jobs ------------------------------------------------------------------

function remembered() {
  try {
    const ids = JSON.parse(localStorage.getItem(STORE_KEY) ?? "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
  } catch {
    return [];
  }
}

function remember(id) {
  const ids = remembered().filter((x) => x !== id);
  ids.push(id);
  localStorage.setItem(STORE_KEY, JSON.stringify(ids.slice(-20)));
}

function forget(id) {
  localStorage.setItem(STORE_KEY, JSON.stringify(remembered().filter((x) => x !== id)));
}

// -- rendering ------------------------------------------------------------------------

function showJob(job) {
  if (job.id !== currentId) return;
  if (job.prompt) {
    $("current-prompt").textContent = `“${job.prompt}”`;
    $("current-prompt").hidden = false;
  }
  const status = $("status");
  status.dataset.status = job.status;
  status.dataset.jobId = job.id;
  const detail = job.progress_message ? ` — ${job.progress_message}` : "";
  const percent = job.status === "processing" ? ` ${job.progress}%` : "";
  status.textContent = `Job ${job.id}: ${job.status}${percent}${detail}`;
  // "3rd in line · about 40 s" while it waits, "about 12 s left" while it runs.
  const wait = $("wait");
  wait.textContent = waitText(job);
  wait.hidden = !wait.textContent;
  const bar = $("progress");
  bar.hidden = job.final;
  bar.value = job.progress;
  $("cancel").hidden = job.final;
  $("error").hidden = !job.error || job.status === "completed";
  $("error").textContent = job.error ?? "";
  // Only http(s): and data:image/ URLs reach the page (safeUrl drops the rest with a
  // console warning): a result URL comes from the provider, not from this app.
  const preview = safeUrl(job.preview_url);
  const link = safeUrl(job.result_url) ?? preview;
  if (job.status === "completed" && preview) {
    $("result-image").src = preview;
    $("result-link").href = link;
    $("result-link").textContent = link;
    $("placeholder-note").hidden = job.preview_url === job.result_url;
    $("result").hidden = false;
  } else {
    $("result-image").removeAttribute("src");
    $("result-link").removeAttribute("href");
    $("result").hidden = true;
  }
}

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.jobId = job.id;
  const preview = safeUrl(job.preview_url);
  if (job.status === "completed" && preview) {
    const img = document.createElement("img");
    img.src = preview;
    img.alt = "";
    li.append(img);
  } else {
    const thumb = document.createElement("span");
    thumb.className = "thumb";
    li.append(thumb);
  }
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = job.prompt ?? job.id;
  prompt.title = `${job.id} · created ${new Date(job.created_at).toLocaleString()}`;
  const badge = document.createElement("span");
  badge.className = `badge ${job.status}`;
  badge.textContent = job.status === "processing" ? `processing ${job.progress}%` : job.status;
  li.append(prompt, badge);
  return li;
}

let refreshing = null;
async function refreshList() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const jobs = await listJobs({ limit: 10 });
      const list = $("jobs");
      list.replaceChildren(...jobs.map(jobItem));
      if (!jobs.length) list.innerHTML = '<li class="muted">Nothing yet.</li>';
    } catch (error) {
      console.warn("could not load the job list:", error.message);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// -- following ------------------------------------------------------------------------

const hooks = {
  pollInterval,
  onCreated(job) {
    remember(job.id);
    currentId = job.id;
    showJob(job);
    refreshList();
  },
  onUpdate(job) {
    showJob(job);
    refreshList();
  },
};

async function settle(id, promise) {
  try {
    await promise;
  } catch (error) {
    if (error.status === 404) {
      // Gone, or never ours (another browser's id): stop following it.
      if (id === currentId) $("status").textContent = `Job ${id} cannot be found.`;
    } else if (!error.job) {
      console.warn(`could not follow job ${id}:`, error.message);
      return; // a network error: keep the id so the next visit tries again
    }
  }
  forget(id);
  refreshList();
}

function resume() {
  for (const id of remembered()) {
    currentId = id;
    console.log(`🔁 Resuming job ${id}`);
    settle(id, followJob(id, { ...hooks }));
  }
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const image = $("image").files[0];
  const button = $("generate");
  button.disabled = true;
  $("error").hidden = true;
  let created = null;
  const promise = generateImageAsync(prompt, {
    ...hooks,
    image,
    onCreated(job) {
      created = job.id;
      button.disabled = false;
      hooks.onCreated(job);
    },
  });
  try {
    await promise;
  } catch (error) {
    if (!created) {
      button.disabled = false;
      $("error").textContent = error.message;
      $("error").hidden = false;
      return;
    }
  }
  await settle(created, promise);
});

$("cancel").addEventListener("click", async () => {
  if (!currentId) return;
  try {
    showJob(await cancelJob(currentId));
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  }
});

resume();
refreshList();
