// lavila app: plain JS, no framework. Every text from the index (file names, captions) goes in through
// textContent, never innerHTML, so a caption cannot inject markup.
"use strict";

const $ = (sel) => document.querySelector(sel);

function fmt(t) {
  const s = Math.max(0, Number(t) || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = String(m).padStart(2, "0"), ss = sec.toFixed(1).padStart(4, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function mediaUrl(video) {
  return "/media/" + video.split("/").map(encodeURIComponent).join("/");
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || `${r.status} ${r.statusText}`);
  return body;
}

// ------------------------------------------------------------------------------------------- player + timeline
const player = $("#player");
let timelineRows = [];

function playMoment(video, start, end) {
  const url = mediaUrl(video);
  player.dataset.video = video;
  player.dataset.start = String(start);
  player.dataset.end = String(end);
  delete player.dataset.seeked;
  const seek = () => {
    player.currentTime = start;
    player.play().catch(() => {});  // autoplay may be refused: the player stays at the moment
  };
  if (player.dataset.src !== url) {
    player.dataset.src = url;
    player.src = url;
    player.addEventListener("loadedmetadata", seek, { once: true });
    player.load();
  } else {
    seek();
  }
  $("#now-playing").textContent = end > start ? `${video}  ${fmt(start)} – ${fmt(end)}` : video;
  loadTimeline(video);
}

player.addEventListener("seeked", () => { player.dataset.seeked = String(player.currentTime); });
player.addEventListener("timeupdate", () => {
  const t = player.currentTime;
  for (const li of document.querySelectorAll("#timeline li[data-start]")) {
    li.classList.toggle("current", Number(li.dataset.start) <= t && t < Number(li.dataset.end));
  }
});

async function loadTimeline(video) {
  const list = $("#timeline");
  let rows = [];
  try {
    rows = (await getJSON(`/api/narrations?video=${encodeURIComponent(video)}`)).narrations;
  } catch (err) {
    list.replaceChildren(el("li", "empty", `No narration: ${err.message}`));
    return;
  }
  timelineRows = rows;
  if (!rows.length) {
    list.replaceChildren(el("li", "empty", "This video has no narration yet (narrate it on the Narrate page)."));
    return;
  }
  list.replaceChildren(...rows.map((r) => {
    const li = el("li");
    li.dataset.start = r.start;
    li.dataset.end = r.end;
    li.append(el("span", "t", `${fmt(r.start)}–${fmt(r.end)}`), el("span", "c", r.caption));
    li.addEventListener("click", () => playMoment(video, r.start, r.end));
    return li;
  }));
}

async function showInfo() {
  try {
    const info = await getJSON("/api/info");
    $("#info").textContent = `${info.segments} segments · ${info.videos} videos · ${info.narrated_videos} narrated`
      + (info.model ? ` · ${info.model}` : "");
    return info;
  } catch (err) {
    $("#info").textContent = err.message;
    return {};
  }
}

// ------------------------------------------------------------------------------------------------------ search
function renderHits(hits) {
  const list = $("#results");
  list.replaceChildren(...hits.map((h) => {
    const li = el("li");
    const b = el("button", "result");
    b.type = "button";
    b.dataset.video = h.video;
    b.dataset.start = h.start;
    b.dataset.end = h.end;
    b.dataset.rank = h.rank;
    b.dataset.score = h.score;
    const img = el("img");
    img.alt = "";
    if (h.thumb) {
      img.loading = "lazy";
      img.src = h.thumb;
      img.addEventListener("error", () => { img.removeAttribute("src"); });
    }
    const meta = el("span", "meta");
    meta.append(el("span", "time", `#${h.rank} · ${fmt(h.start)} – ${fmt(h.end)}`),
      el("span", "video", h.video), el("span", "score", `similarity ${h.score.toFixed(3)}`));
    if (h.narration) meta.append(el("span", "narration", h.narration));
    if (!h.playable) meta.append(el("span", "refused", "not served: a link to a file outside the indexed folder"));
    b.append(img, meta);
    b.disabled = !h.playable;
    b.addEventListener("click", () => {
      document.querySelectorAll(".result.active").forEach((x) => x.classList.remove("active"));
      b.classList.add("active");
      playMoment(h.video, h.start, h.end);
    });
    li.append(b);
    return li;
  }));
}

function initSearch() {
  const form = $("#search-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = $("#q").value.trim();
    if (!q) return;
    $("#status").textContent = "Searching…";
    try {
      const res = await getJSON(`/api/search?q=${encodeURIComponent(q)}&k=24`);
      renderHits(res.hits);
      $("#status").textContent = `${res.hits.length} moments for “${res.query}” (${res.ms} ms)`;
    } catch (err) {
      $("#status").textContent = `Search failed: ${err.message}`;
    }
  });
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("#q").value = q; form.requestSubmit(); }
}

// ----------------------------------------------------------------------------------------------------- narrate
async function fillVideos(selected) {
  const videos = await getJSON("/api/videos");
  const select = $("#video-select");
  const sorted = [...videos].sort((a, b) => Number(a.narrated) - Number(b.narrated));  // un-narrated first
  select.replaceChildren(...sorted.map((v) => {
    const o = el("option", null, `${v.narrated ? "✓ " : ""}${v.name}${v.upload ? " (uploaded)" : ""}`);
    o.value = v.id;
    return o;
  }));
  if (selected) select.value = selected;
}

async function follow(job) {
  const bar = $("#progress"), status = $("#job-status");
  for (;;) {
    bar.max = Math.max(job.total, 1);
    bar.value = job.done;
    status.textContent = job.error ? `Failed: ${job.error}` : job.message;
    status.dataset.state = job.state;
    if (job.state === "done" || job.state === "failed") break;
    await new Promise((r) => setTimeout(r, 400));
    job = await getJSON(`/api/jobs/${job.id}`);
  }
  if (job.state === "done") {
    bar.value = bar.max;
    await fillVideos(job.video);
    await showInfo();
    playMoment(job.video, 0, 0);
  }
  return job;
}

async function narrate(video) {
  $("#narrate-button").disabled = $("#upload-button").disabled = true;
  try {
    const job = await getJSON("/api/narrate", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify({ video }) });
    await follow(job);
  } catch (err) {
    $("#job-status").textContent = `Failed: ${err.message}`;
  } finally {
    $("#narrate-button").disabled = $("#upload-button").disabled = false;
  }
}

async function initNarrate(info) {
  $("#narrator-status").textContent = info.narrator
    ? "Captions every window of the video with the narrator the app was started with."
    : "This app was started without a narrator: run `lavila app --narrator CKPT` to narrate here.";
  $("#narrate-button").disabled = $("#upload-button").disabled = !info.narrator;
  await fillVideos();
  $("#video-select").addEventListener("change", (e) => playMoment(e.target.value, 0, 0));
  $("#narrate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const video = $("#video-select").value;
    if (video) narrate(video);
  });
  $("#upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("#upload").files[0];
    if (!file) return;
    $("#job-status").textContent = `Uploading ${file.name}…`;
    try {
      const up = await getJSON(`/api/uploads/${encodeURIComponent(file.name)}`, { method: "PUT", body: file });
      await fillVideos(up.video);
      await narrate(up.video);
    } catch (err) {
      $("#job-status").textContent = `Upload failed: ${err.message}`;
    }
  });
}

(async () => {
  const info = await showInfo();
  if (document.body.dataset.page === "narrate") await initNarrate(info);
  else initSearch();
})();
