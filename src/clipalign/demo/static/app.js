"use strict";
// The clipalign demo page: upload or pick an image, check a caption, then click words for heatmaps or
// drag a box over the image. Every picture and colour comes from the server; this only wires it up.

const $ = (id) => document.getElementById(id);
const state = { image: null, analysis: null, suggested: "", selection: [], anchor: null, ticket: 0, drag: null };

async function api(path, body, contentType = "application/json") {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": contentType },
    body: contentType === "application/json" ? JSON.stringify(body) : body,
  };
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new Error(data && data.error ? data.error : `${response.status} ${response.statusText}`);
  }
  return data;
}

function say(text, kind = "error") {
  const message = $("message");
  message.textContent = text;
  message.className = kind;
  message.hidden = !text;
}

function status(text) {
  $("status").textContent = text;
}

function hideHeatmap() {
  $("heat").hidden = true;
  $("heat-info").hidden = true;
  state.selection = [];
  state.ticket += 1;
  markSelection();
}

function clearResult() {
  state.analysis = null;
  $("result").hidden = true;
  $("box").hidden = true;
  $("region").hidden = true;
  hideHeatmap();
}

async function useImage(blob) {
  say("");
  status("Uploading the image…");
  try {
    // Always octet-stream: the server refuses types other sites could send without asking (text/plain).
    state.image = await api("api/images", blob, "application/octet-stream");
  } catch (error) {
    status("");
    say(error.message);
    return false;
  }
  clearResult();
  $("photo").src = state.image.display;
  $("photo").hidden = false;
  $("placeholder").hidden = true;
  status(`Image ${state.image.width}×${state.image.height}. Type a caption and check it.`);
  return true;
}

async function pickExample(example, button) {
  const blob = await (await fetch(example.url)).blob();
  if (!(await useImage(blob))) return;
  document.querySelectorAll(".example").forEach((b) => b.classList.toggle("chosen", b === button));
  const caption = $("caption");
  if (!caption.value.trim() || caption.value === state.suggested) {
    caption.value = example.caption;
    state.suggested = example.caption;
  }
}

async function analyze(event) {
  event.preventDefault();
  if (!state.image) {
    say("Pick an example or upload an image first.");
    return;
  }
  $("check").disabled = true;
  say("");
  status("Scoring the caption…");
  try {
    const data = await api("api/analyze", { image: state.image.image, caption: $("caption").value });
    clearResult();
    state.analysis = data.analysis;
    $("words").innerHTML = data.caption_html;
    $("legend").innerHTML = data.legend_html;
    $("scores").innerHTML = data.scores_html;
    $("result").hidden = false;
    say(data.warnings.join("\n"), "warning");
    status("");
  } catch (error) {
    status("");
    say(error.message);
  } finally {
    $("check").disabled = false;
  }
}

function markSelection() {
  document.querySelectorAll("#words .ca-word").forEach((el) => {
    el.classList.toggle("selected", state.selection.includes(Number(el.dataset.index)));
  });
}

async function showHeatmap(words) {
  state.selection = words;
  markSelection();
  const ticket = ++state.ticket;
  status("Computing where the words land in the image… (slowest the first time for a caption)");
  try {
    const data = await api("api/heatmap", { analysis: state.analysis, words });
    if (ticket !== state.ticket) return;
    $("heat").src = data.image;
    $("heat").hidden = false;
    $("heat-label").textContent = `Where “${data.text}” lands: green supports, magenta contradicts.`;
    $("heat-legend").innerHTML = data.legend_html;
    $("heat-info").hidden = false;
    status("");
  } catch (error) {
    if (ticket !== state.ticket) return;
    status("");
    say(error.message);
  }
}

function onWordClick(event) {
  const word = event.target.closest(".ca-word");
  if (!word) return;
  window.getSelection().removeAllRanges();
  const index = Number(word.dataset.index);
  if (event.shiftKey && state.anchor !== null) {
    const [lo, hi] = [Math.min(state.anchor, index), Math.max(state.anchor, index)];
    showHeatmap(Array.from({ length: hi - lo + 1 }, (_, k) => lo + k));
  } else {
    state.anchor = index;
    showHeatmap([index]);
  }
}

function onWordSelect() {
  const selection = window.getSelection();
  if (selection.isCollapsed) return;
  const words = [...document.querySelectorAll("#words .ca-word")]
    .filter((el) => selection.containsNode(el, true))
    .map((el) => Number(el.dataset.index));
  if (words.length > 1) {
    selection.removeAllRanges();
    showHeatmap(words);
  }
}

function clamp(value, lo, hi) {
  return Math.min(Math.max(value, lo), hi);
}

function dragPoint(event) {
  const rect = $("photo").getBoundingClientRect();
  return [clamp(event.clientX - rect.left, 0, rect.width), clamp(event.clientY - rect.top, 0, rect.height)];
}

function drawBox([x0, y0], [x1, y1]) {
  const box = $("box");
  Object.assign(box.style, {
    left: `${Math.min(x0, x1)}px`,
    top: `${Math.min(y0, y1)}px`,
    width: `${Math.abs(x1 - x0)}px`,
    height: `${Math.abs(y1 - y0)}px`,
  });
  box.hidden = false;
}

function startDrag(event) {
  if ($("photo").hidden || event.button !== 0) return;
  event.preventDefault();
  $("stage").setPointerCapture(event.pointerId);
  state.drag = dragPoint(event);
  drawBox(state.drag, state.drag);
}

function moveDrag(event) {
  if (state.drag) drawBox(state.drag, dragPoint(event));
}

async function endDrag(event) {
  if (!state.drag) return;
  const [x0, y0] = state.drag;
  const [x1, y1] = dragPoint(event);
  state.drag = null;
  if (Math.abs(x1 - x0) < 4 || Math.abs(y1 - y0) < 4) {
    $("box").hidden = true;
    return;
  }
  if (!state.analysis) {
    say("Check a caption first: the box is scored against its words.");
    return;
  }
  const rect = $("photo").getBoundingClientRect();
  const sx = state.image.width / rect.width;
  const sy = state.image.height / rect.height;
  const box = [Math.min(x0, x1) * sx, Math.min(y0, y1) * sy, Math.abs(x1 - x0) * sx, Math.abs(y1 - y0) * sy];
  const ticket = ++state.ticket;
  status("Scoring the box against each word…");
  try {
    const data = await api("api/box", { analysis: state.analysis, box });
    if (ticket !== state.ticket) return;
    $("region-words").innerHTML = data.words_html;
    $("region-legend").innerHTML = data.legend_html;
    $("region").hidden = false;
    status("");
  } catch (error) {
    if (ticket !== state.ticket) return;
    status("");
    say(error.message);
  }
}

async function start() {
  $("caption-form").addEventListener("submit", analyze);
  $("upload").addEventListener("change", async (event) => {
    const [file] = event.target.files;
    event.target.value = "";
    if (file && (await useImage(file))) {
      document.querySelectorAll(".example").forEach((b) => b.classList.remove("chosen"));
    }
  });
  $("words").addEventListener("click", onWordClick);
  $("words").addEventListener("mouseup", onWordSelect);
  $("words").addEventListener("mousedown", (event) => {
    if (event.shiftKey) event.preventDefault(); // shift-click picks a span, not a text selection
  });
  $("heat-clear").addEventListener("click", hideHeatmap);
  $("stage").addEventListener("pointerdown", startDrag);
  $("stage").addEventListener("pointermove", moveDrag);
  $("stage").addEventListener("pointerup", endDrag);
  try {
    const info = await api("api/info");
    $("model").textContent = `model: ${info.model}`;
    const megapixels = Math.round(info.max_pixels / 1e6);
    $("limits").textContent = `(up to ${megapixels} megapixels, ${Math.round(info.max_upload_bytes / 2 ** 20)} MiB)`;
    for (const example of info.examples) {
      const button = document.createElement("button");
      const image = document.createElement("img");
      const label = document.createElement("span");
      button.type = "button";
      button.className = "example";
      button.dataset.example = example.name;
      image.src = example.url;
      image.alt = "";
      label.textContent = example.title;
      button.append(image, label);
      button.addEventListener("click", () => pickExample(example, button));
      $("examples").append(button);
    }
  } catch (error) {
    say(`Cannot reach the server: ${error.message}`);
  }
}

start();
