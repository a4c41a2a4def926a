// The page: collects a photo (or a clip), styles with weights and options (regions painted on the photo
// included), posts them to /api/stylize
// (a clip: to /api/videos, then follows the job's progress; the live camera: frames over /api/live) and shows
// the result or the server's errors next to the control they concern. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { content: null, video: false, job: null, request: null, upload: null, reading: false, styles: [],
  info: { max_styles: 8, max_refine_steps: 0 } };
let resultUrl = null;
let originalUrl = null;  // the chosen photo's or clip's, shown as the original (revoked when another is chosen)
const VIDEO_SUFFIXES = /\.(mp4|m4v|mov|mkv|webm)$/i;
// Region colours: each style keeps its own while it is chosen (a painting survives removing another style).
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
const paint = { brush: undefined, size: 40, painted: false, drawing: false, last: null, ready: false,
  cursor: null, penDown: false, url: null };  // cursor, penDown: the keyboard's brush (photo pixels)

const animated = new WeakSet();  // GIFs of more than one frame: clips, as the server and the CLI take them

function isVideo(file) {
  return file.type.startsWith("video/") || VIDEO_SUFFIXES.test(file.name) || animated.has(file);
}

function isGif(file) {
  return file.type === "image/gif" || /\.gif$/i.test(file.name);
}

// A GIF's frames, counted to 2: its blocks walked (extensions and images, each a chain of sub-blocks).
function gifFrames(b) {
  if (b.length < 13 || b[0] !== 0x47 || b[1] !== 0x49 || b[2] !== 0x46) return 0;  // "GIF"
  let i = 13 + (b[10] & 0x80 ? 3 << ((b[10] & 7) + 1) : 0);  // the header, the global colour table
  const subBlocks = () => { while (i < b.length && b[i] !== 0) i += b[i] + 1; i += 1; };
  let frames = 0;
  while (i < b.length && frames < 2) {
    const kind = b[i++];
    if (kind === 0x21) { i += 1; subBlocks(); }  // an extension: its label, its data
    else if (kind === 0x2c) {  // an image: its descriptor, local colour table, LZW code size and data
      frames += 1;
      const flags = b[i + 8];
      i += 9 + (flags & 0x80 ? 3 << ((flags & 7) + 1) : 0) + 1;
      subBlocks();
    } else break;  // the trailer (or what is not a GIF's)
  }
  return frames;
}

// What was chosen or dropped: one photo or clip, or several photos (stylized one after another). An animated
// GIF is a clip (it was sent as a photo, and its first frame came back).
async function setFiles(files) {
  files = [...files];
  for (const file of files.filter(isGif)) {
    try { if (gifFrames(new Uint8Array(await file.arrayBuffer())) > 1) animated.add(file); } catch (e) { /* a photo */ }
  }
  if (files.length > 1) setBatch(files); else setContent(files[0]);
}

// What is still on its way stops: a photo's call, a clip's upload or job, a batch (what it brings is not recorded).
function stopRunning() {
  if (state.request) state.request.abort();  // a photo on its way: its busy state and outcome go with it
  if (state.upload) { state.upload.abort(); state.upload = null; }  // a clip still uploading: no job starts
  if (state.job) cancelVideo();
  if (batch.running) batch.cancelled = true;
  if (batch.request) batch.request.abort();  // a photo of the run still on its way is stopped
  batch.run = null;  // and what the run still brings is not recorded
}

// The original is shown as a picture (an animated GIF too: a video player does not play one) or as a video.
function originalIsPicture() {
  return !state.video || Boolean(state.content && isGif(state.content));
}

function setContent(file) {
  if (!file) return;
  if (live.stream || live.opening) stopLive();
  forgetResult();
  clearErrors();
  batch.files = [];
  state.content = file;
  state.video = isVideo(file);
  const kind = state.video ? "Clip" : "Photo";
  const size = file.size < 1024 ? `${file.size} bytes` : `${Math.round(file.size / 1024)} kB`;  // not "0 kB"
  $("content-name").textContent = `${kind}: ${file.name} (${size})`;
  if (state.video && !state.info.video) {
    $("content-error").textContent = "This page was installed without video support: choose a photo.";
  }
  // the options that apply: a clip has a size and a steadiness, a photo a mask and refine steps
  $("size-row").hidden = $("temporal-row").hidden = $("fps-row").hidden = $("trim-row").hidden = !state.video;
  $("mask-row").hidden = $("regions-row").hidden = state.video;
  resetPainter(state.video ? null : file);
  $("refine-row").hidden = state.video || !state.info.max_refine_steps;
  $("exif-row").hidden = $("format-row").hidden = $("photo-size-row").hidden = state.video;
  $("original-caption").textContent = "Original";
  const last = originalUrl;
  originalUrl = URL.createObjectURL(file);
  $("output").hidden = state.video;
  $("original").hidden = !originalIsPicture();
  $("original-video").hidden = originalIsPicture();  // the stylized clip's player shows when it has one
  if (!originalIsPicture()) {
    $("original").removeAttribute("src");  // (its error listener ignores an image without a src)
    $("original-video").src = originalUrl;
  } else {
    unloadVideo($("original-video"));
    $("original").src = originalUrl;
  }
  if (last) URL.revokeObjectURL(last);  // nothing shows it now
}

// A new content: the result shown was the last one's, and so is a clip or photos still on their way (stopped).
function forgetResult() {
  stopRunning();
  batch.results = [];
  $("output").removeAttribute("src");
  if (resultUrl) { URL.revokeObjectURL(resultUrl); resultUrl = null; }  // (its Download is hidden below)
  clearOutputVideo();
  $("download").hidden = true;
  $("batch-results").hidden = $("download-all").hidden = true;
  clearBatchResults();
  $("pair").hidden = false;
}

// file: the image shown (and sent, unless ref names a style of the server's library: "id:NAME").
// Whether it was added (there is room).
function addStyle(file, name, example, ref, weight = 1) {
  if (state.styles.length >= state.info.max_styles) {
    $("styles-error").textContent = `At most ${state.info.max_styles} styles.`;
    return false;
  }
  const colour = PALETTE.find((c) => !state.styles.some((st) => st.colour === c));
  state.styles.push({ file, name, example, ref, weight, colour });
  renderStyles();
  return true;
}

// An example style chosen (by its button or a preset): its image fetched and added, its button pressed.
async function addExample(example, weight = 1, wanted = () => true) {
  const blob = await (await fetch(example.url)).blob();
  if (!wanted()) return;  // (a preset clicked again meanwhile: its own run adds it)
  const file = new File([blob], example.url.split("/").pop(), { type: blob.type });
  if (!addStyle(file, example.name, example.name, example.style, weight)) return;
  const button = document.querySelector(`#gallery button[data-name="${example.name}"]`);
  if (button) button.setAttribute("aria-pressed", "true");
}

// ``fromButton``: its Remove button was pressed, which the list drawn anew takes away (a preset or the gallery
// removing a style keeps focus on what was pressed).
function removeStyle(index, fromButton = false) {
  const [gone] = state.styles.splice(index, 1);
  erasePaint(gone.colour);  // else the next style chosen would take its colour, and its painting with it
  if (gone.example) {
    const button = document.querySelector(`#gallery button[data-name="${gone.example}"]`);
    if (button) button.setAttribute("aria-pressed", "false");
  }
  renderStyles();
  if (gone.url) URL.revokeObjectURL(gone.url);  // its image left the list with it
  if (!fromButton) return;
  // the list is drawn anew: focus goes to the next style's Remove (or the last one's), else to adding one
  const removes = document.querySelectorAll("#styles li button");
  (removes[Math.min(index, removes.length - 1)] || $("style-upload")).focus();
}

function renderStyles() {
  liveChanged();
  markPresets();
  const list = $("styles");
  list.replaceChildren();
  state.styles.forEach((style, i) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    style.url = style.url || URL.createObjectURL(style.file);  // one per style, not one per drawing
    img.src = style.url;
    img.alt = "";
    const box = document.createElement("div");
    const label = document.createElement("label");
    label.htmlFor = `weight-${i}`;
    label.textContent = `Weight of ${style.name}: `;
    const out = document.createElement("output");
    out.id = `weight-${i}-value`;
    out.setAttribute("aria-live", "off");  // the slider says its own value; an <output> would say it again
    out.textContent = style.weight.toFixed(2);
    label.append(out);
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", id: `weight-${i}`, min: "0", max: "1", step: "0.05" });
    slider.value = String(style.weight);
    slider.className = "weight";
    slider.addEventListener("input", () => {
      style.weight = Number(slider.value);
      out.textContent = style.weight.toFixed(2);
      markPresets();
    });
    slider.addEventListener("change", liveChanged);
    box.append(label, document.createElement("br"), slider);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove ${style.name}`);
    remove.addEventListener("click", () => removeStyle(i, true));
    const err = document.createElement("p");
    err.className = "error";
    err.id = `style-error-${i}`;
    err.setAttribute("role", "alert");
    li.append(img, box, remove, err);
    list.append(li);
  });
  $("styles-error").textContent = "";
  renderBrushes();
}

// --- regions painted on the photo: a canvas at the photo's own size, sent as a labels image ---------------
function resetPainter(file) {
  paint.painted = false;
  paint.ready = false;
  $("painter").hidden = true;
  $("paint").setAttribute("aria-expanded", "false");
  $("paint").disabled = !file;
  $("paint-why").hidden = Boolean(file);  // a disabled button says nothing of why
  if (!file) return;
  const last = paint.url;
  paint.url = URL.createObjectURL(file);
  $("paint-photo").src = paint.url;
  if (last) URL.revokeObjectURL(last);
}

function photoShown() {
  const img = $("paint-photo");
  const canvas = $("paint-canvas");
  canvas.width = img.naturalWidth;  // the photo's own pixels (turned as its EXIF says, as the server turns it)
  canvas.height = img.naturalHeight;
  // the box's width set by the screen's height too (style.css): a portrait photo on a phone held sideways was a
  // 640 x 853 canvas, under half of it on the screen and the page scrolled only from the strips beside it
  canvas.parentElement.style.setProperty("--aspect", img.naturalWidth / img.naturalHeight);
  paint.cursor = { x: canvas.width / 2, y: canvas.height / 2 };  // the keyboard's brush starts in the middle
  paint.ready = true;
}

function renderBrushes() {
  const box = $("brushes");
  box.replaceChildren();
  const brushes = state.styles.map((st) => ({ colour: st.colour, name: st.name }));
  brushes.push({ colour: null, name: "keep the photo (eraser)" });
  // the first style's colour until the user picks a brush (or when the picked style is removed)
  if (paint.brush === undefined || !brushes.some((b) => b.colour === paint.brush)) paint.brush = brushes[0].colour;
  if (!state.styles.length) paint.brush = undefined;
  for (const b of brushes) {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-pressed", String(b.colour === (paint.brush === undefined ? null : paint.brush)));
    const chip = document.createElement("span");
    chip.className = b.colour ? "chip" : "chip erase";
    if (b.colour) chip.style.background = b.colour;
    button.append(chip, document.createTextNode(b.name));
    button.addEventListener("click", () => {  // the buttons are drawn anew: focus goes to the one now pressed
      paint.brush = b.colour;
      renderBrushes();
      $("brushes").querySelector('[aria-pressed="true"]').focus();
    });
    box.append(button);
  }
}

function togglePainter() {
  const open = $("painter").hidden;
  if (open && !paint.ready) {
    $("labels-error").textContent = "This browser cannot show the photo, so regions cannot be painted here.";
    return;
  }
  $("painter").hidden = !open;
  $("paint").setAttribute("aria-expanded", String(open));
  renderBrushes();
}

// Where a pointer event is, in photo pixels.
function pointerAt(event) {
  const canvas = $("paint-canvas");
  const k = canvas.width / canvas.clientWidth;  // page pixels -> photo pixels
  return { x: event.offsetX * k, y: event.offsetY * k };
}

// The painting's 2D context. It is read back (the labels sent, an eraser per colour), so it says so: the first
// getContext fixes a canvas's attributes, and without it Chromium warned of repeated getImageData.
function paintContext() {
  return $("paint-canvas").getContext("2d", { willReadFrequently: true });
}

// Paint (or erase) a dot at ``at`` (photo pixels), or a line to it from the last point painted.
function strokeTo(at, start) {
  const canvas = $("paint-canvas");
  const ctx = paintContext();
  const width = paint.size * canvas.width / canvas.clientWidth;  // the brush size is in page pixels
  ctx.globalCompositeOperation = paint.brush ? "source-over" : "destination-out";
  ctx.fillStyle = ctx.strokeStyle = paint.brush || "#000";
  ctx.lineWidth = width;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (start || !paint.last) {
    ctx.arc(at.x, at.y, width / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.moveTo(paint.last.x, paint.last.y);
    ctx.lineTo(at.x, at.y);
    ctx.stroke();
  }
  paint.last = at;
  if (paint.brush) paint.painted = true;
}

// Painting without a mouse: the arrow keys move a brush drawn over the photo, Space puts it down or lifts it
// (painting as it moves while down), Escape lifts it. Other keys (Tab) keep their usual meaning.
const MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

function paintKey(event) {
  const canvas = $("paint-canvas");
  if (!paint.ready || !canvas.width) return;
  const k = canvas.width / canvas.clientWidth;
  if (event.key in MOVES) {
    const step = (event.shiftKey ? 4 : 1) * Math.max(2, paint.size / 2) * k;  // half a brush: strokes overlap
    const [dx, dy] = MOVES[event.key];
    paint.cursor = {
      x: Math.min(canvas.width - 1, Math.max(0, paint.cursor.x + dx * step)),
      y: Math.min(canvas.height - 1, Math.max(0, paint.cursor.y + dy * step)),
    };
    if (paint.penDown) strokeTo(paint.cursor, false);
  } else if (event.key === " " || event.key === "Enter") {
    paint.penDown = !paint.penDown;
    paint.last = null;
    if (paint.penDown) strokeTo(paint.cursor, true);
  } else if (event.key === "Escape" && paint.penDown) {
    paint.penDown = false;
  } else {
    return;
  }
  event.preventDefault();  // no page scroll, no form submit
  showBrushCursor();
}

// The keyboard's brush: a ring the brush's size where it is, and a line said to a screen reader.
function showBrushCursor() {
  const canvas = $("paint-canvas");
  const ring = $("paint-cursor");
  const k = canvas.width / canvas.clientWidth;
  ring.hidden = false;
  ring.style.left = `${paint.cursor.x / k}px`;
  ring.style.top = `${paint.cursor.y / k}px`;
  ring.style.width = ring.style.height = `${paint.size}px`;
  const what = paint.brush ? "painting" : "erasing";
  const across = Math.round((100 * paint.cursor.x) / canvas.width);
  const down = Math.round((100 * paint.cursor.y) / canvas.height);
  $("paint-status").textContent = `Brush ${across}% across, ${down}% down${paint.penDown ? `, ${what}` : ""}.`;
}

function hideBrushCursor() {
  paint.penDown = false;
  paint.last = null;
  $("paint-cursor").hidden = true;
}

// Take one brush colour's strokes off the canvas (their smoothed edges too: pixels nearest that colour).
function erasePaint(colour) {
  const canvas = $("paint-canvas");
  if (!paint.painted || !canvas.width) return;
  const ctx = paintContext();
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  const rgb = PALETTE.map(hexRgb);
  const mine = PALETTE.indexOf(colour);
  for (let p = 0; p < d.length; p += 4) {
    if (d[p + 3] && nearestBrush(d, p, rgb) === mine) d[p + 3] = 0;
  }
  ctx.putImageData(pixels, 0, 0);
}

// The index of the palette colour (``rgb``: PALETTE as [r, g, b]) nearest the pixel at ``p`` of ``d``.
function nearestBrush(d, p, rgb) {
  let best = -1;
  let bestDistance = Infinity;
  for (let i = 0; i < rgb.length; i++) {
    const dist = (d[p] - rgb[i][0]) ** 2 + (d[p + 1] - rgb[i][1]) ** 2 + (d[p + 2] - rgb[i][2]) ** 2;
    if (dist < bestDistance) { bestDistance = dist; best = i; }
  }
  return best;
}

function hexRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// The painting as labels: every pixel snapped to the nearest palette colour (the canvas smooths stroke edges,
// and a label must be exact) or black where unpainted. Returns null when nothing is painted, else the PNG
// and the styles that have no painted pixel.
async function labelsImage() {
  if (!paint.painted || !paint.ready) return null;
  const canvas = $("paint-canvas");
  const pixels = paintContext().getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  const rgb = PALETTE.map(hexRgb);
  const counts = new Map();
  for (let p = 0; p < d.length; p += 4) {
    const best = d[p + 3] >= 128 ? nearestBrush(d, p, rgb) : -1;
    const [r, g, b] = best < 0 ? [0, 0, 0] : rgb[best];
    d[p] = r; d[p + 1] = g; d[p + 2] = b; d[p + 3] = 255;
    if (best >= 0) counts.set(PALETTE[best], (counts.get(PALETTE[best]) || 0) + 1);
  }
  const missing = state.styles.map((st, i) => (counts.get(st.colour) ? -1 : i)).filter((i) => i >= 0);
  if (missing.length === state.styles.length) return null;  // only removed styles' colours: nothing to send
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  out.getContext("2d").putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
  return { blob, missing };
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(`the page's server answered ${response.status}`);
    state.info = await response.json();
  } catch (e) {
    $("form-error").textContent = "The page could not reach its server. Reload to try again.";
    return;
  }
  $("camcorder-label").hidden = !state.info.video;
  capSizes();
  $("refine_steps").max = String(state.info.max_refine_steps);
  $("refine-row").hidden = state.video || !state.info.max_refine_steps;
  // A server older than keep_exif refuses a photo that asks for it (it would drop it unread): the box, ticked by
  // default, is cleared and disabled there, saying why, rather than failing every photo.
  const features = state.info.features;
  if (Array.isArray(features) && !features.includes("keep_exif")) {
    $("keep_exif").checked = false;
    $("keep_exif").disabled = true;
    $("keep_exif").nextElementSibling.textContent += " (this page's server is too old to keep them)";
  }
  for (const example of state.info.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.name = example.name;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = example.url;
    img.alt = "";
    button.append(img, document.createTextNode(example.name));
    button.addEventListener("click", async () => {
      if (button.dataset.adding) return;  // a second click while its image comes (a double click added it twice)
      if (button.getAttribute("aria-pressed") === "true") {
        const index = state.styles.findIndex((s) => s.example === example.name);
        if (index >= 0) removeStyle(index);
        return;
      }
      button.dataset.adding = "1";
      try { await addExample(example); } finally { delete button.dataset.adding; }
    });
    $("gallery").append(button);
  }
  for (const preset of state.info.presets || []) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.preset = preset.name;
    button.setAttribute("aria-pressed", "false");
    button.textContent = preset.name;
    button.addEventListener("click", () => applyPreset(preset));
    $("presets").append(button);
  }
  $("presets-row").hidden = !(state.info.presets || []).length;
}

// The size choices this server takes: none over its max_content_side (a 2048-px default on a server of 1,024
// had every photo refused, a small one too), its own largest offered instead, and that the default where the
// usual one is over it. "As taken" is scaled down to it by the server.
function capSizes() {
  const max = Number(state.info.max_content_side) || 0;
  if (!max) return;
  for (const [id, usual] of [["photo-size", "2048"], ["size", "640"]]) {
    const select = $(id);
    const sides = () => [...select.options].filter((o) => Number(o.value) > 0);
    const over = sides().filter((o) => Number(o.value) > max);
    const was = select.value;  // (removing the selected option moves the choice to the first: the smallest)
    over.forEach((o) => o.remove());
    if (over.length && !sides().some((o) => Number(o.value) === max)) {
      const largest = new Option(`${max} px (this server's largest)`, String(max));
      select.insertBefore(largest, select.querySelector('option[value="0"]'));
    }
    const asTaken = select.querySelector('option[value="0"]');
    if (asTaken && over.length) asTaken.textContent = `${id === "size" ? "as filmed" : "as taken"}, at most ${max} px`;
    const kept = sides().map((o) => o.value);
    if (!kept.includes(was)) {  // the usual default, or the largest under it
      select.value = kept.includes(usual) ? usual : kept[kept.length - 1] || "0";
    }
  }
}

// A preset of the server's library: its styles (the library's, by name) with their weights, its strength and
// colours, set on the page as if chosen by hand (each can be changed after).
let presetRun = 0;  // the last preset clicked: one clicked before it, still adding its styles, stops
async function applyPreset(preset) {
  const run = ++presetRun;  // (a double click, or two presets at once, interleaved: styles doubled or mixed)
  clearErrors();
  for (const style of [...state.styles]) removeStyle(state.styles.indexOf(style));
  for (const part of preset.styles) {
    const example = state.info.examples.find((e) => e.name === part.style);
    if (example) await addExample(example, part.weight, () => run === presetRun);
    if (run !== presetRun) return;
  }
  $("alpha").value = String(preset.alpha);
  $("alpha-value").textContent = Number(preset.alpha).toFixed(2);
  $("preserve_color").value = preset.preserve_color;
  liveChanged();  // the strength and colours too, while the camera is live
  markPresets();
}

// Each preset's button pressed while the page's styles, weights, strength and colours are the preset's: which one
// is on shows (its buttons never did), and stops showing once something is changed by hand.
function markPresets() {
  const near = (a, b) => Math.abs(Number(a) - Number(b)) < 0.005;
  for (const button of $("presets").querySelectorAll("button")) {
    const preset = (state.info.presets || []).find((p) => p.name === button.dataset.preset);
    const on = Boolean(preset) && preset.styles.length === state.styles.length
      && preset.styles.every((part, i) => state.styles[i].example === part.style && near(state.styles[i].weight,
                                                                                        part.weight))
      && near($("alpha").value, preset.alpha) && $("preserve_color").value === preset.preserve_color;
    button.setAttribute("aria-pressed", String(on));
  }
}

function clearErrors() {
  document.querySelectorAll(".error").forEach((el) => { el.textContent = ""; });
}

// A problem as shown beside its control: the control needs no naming ("styles[1].weight" beside style 1 is
// "weight: ...", "content" beside the photo is the description alone).
function besideControl(field, description) {
  const style = /^styles\[\d+\]\.?(.*)$/.exec(field || "");
  const rest = style ? style[1] : (field || "").replace(/^[^.[]*\.?/, "");
  // a style's image is the style itself ("image: not an image..." beside it named a field)
  const said = limitInWords(description);
  return rest && rest !== "image" ? `${rest}: ${said}` : said;
}

// The server's limits by their setting's name ("over the limit of max_refine_steps=500") in a visitor's words.
const LIMIT_WORDS = { max_refine_steps: "refine steps", max_video_frames: "frames", max_styles: "styles",
                      max_content_side: "pixels a side" };

function limitInWords(message) {
  return message
    .replace(/over the limit of max_pixels=(\d+)/,
             (_, n) => `more pixels than this server takes (${Number(n).toLocaleString("en")})`)
    .replace(/over the limit of (\w+)=(\d+)/, (all, name, n) => (LIMIT_WORDS[name]
      ? `over this server's limit of ${Number(n).toLocaleString("en")} ${LIMIT_WORDS[name]}` : all));
}

// The style a server field ("styles[1].image") names, of those the call sent; null for another field.
function sentStyle(field, sent) {
  const style = /^styles\[(\d+)\]/.exec(field || "");
  return style ? sent[Number(style[1])] || null : null;
}

// A server field ("styles[1].image", "content", "alpha"...) -> the message area beside its control.
function errorArea(field, sent = state.styles) {
  // the style the call sent, where it is in the list now (one removed meanwhile moved the others' places: its
  // error was shown beside the style that took its place); one no longer in the list: the list's own area
  const now = state.styles.indexOf(sentStyle(field, sent));
  if (now >= 0 && $(`style-error-${now}`)) return $(`style-error-${now}`);
  if (field && field.startsWith("styles")) return $("styles-error");
  const name = (field || "").split(/[.[]/)[0];
  if (name === "size" && !state.video) return $("photo-size-error");  // a photo's size, not the clip's row
  return $(`${name}-error`) || $("form-error");
}

// The status for showError of a failed job's or a live session's error: a server out of reach gets the page's
// own words, as a 503 does; any other error its message.
function errorStatus(error) {
  return error && error.code === "UNAVAILABLE" ? 503 : 400;
}

function showError(body, status, sent = state.styles) {
  const error = (body && body.error) || { message: `The server answered ${status}.`, violations: [] };
  const plain = {
    429: error.message ? `Busy: ${error.message}. Try again in a moment.` : "The server is busy right now. Try again in a moment.",
    503: "The style-transfer server is not available right now. Try again later.",
    504: "The server took too long. Try a smaller photo or fewer refine steps.",
    501: error.message,
    413: error.message,
  };
  if (error.violations && error.violations.length) {
    for (const v of error.violations) {
      const area = errorArea(v.field, sent);
      let text = area === $("form-error") ? `${v.field}: ${limitInWords(v.description)}`
                                          : besideControl(v.field, v.description);
      const gone = sentStyle(v.field, sent);
      if (gone && !state.styles.includes(gone)) text = `${gone.name} (removed since): ${text}`;
      area.textContent = (area.textContent ? area.textContent + " " : "") + text;
    }
  } else {
    $("form-error").textContent = plain[status] || limitInWords(error.message || "");
  }
}

// Why a photo cannot be sent whole under the page's upload limit, or null: said at once, beside the photo
// (uploaded first, a 23-MB photo was refused only after it, below Stylize and without its name).
function overUpload(file) {
  const limit = state.info && state.info.max_upload_mb;
  if (!limit || file.size <= limit * 2 ** 20) return null;
  return `${(file.size / 2 ** 20).toFixed(1)} MB, over this page's upload limit of ${limit} MB: send a smaller photo`;
}

// What a photo and a clip send alike: the content, the styles with their weights, strength and colours.
function commonForm(content = state.content) {
  const data = new FormData();
  data.append("content", content);
  for (const style of state.styles) {
    data.append("styles", style.ref || style.file);  // a library style travels by name
    data.append("weights", String(style.weight));
  }
  data.append("alpha", $("alpha").value);
  data.append("preserve_color", $("preserve_color").value);
  return data;
}

// The mask chosen, named beside its button, and the button that takes it back shown while there is one.
function showMask() {
  const mask = $("mask").files[0];
  $("mask-name").textContent = mask ? `Mask: ${mask.name}` : "";
  $("mask-clear").hidden = !mask;
}

// What a photo's call (one photo, or each of several) takes beyond the styles: refine steps, its size, the format.
// The refine steps a photo call asks for (0: none, or refine not offered).
function refineSteps() {
  return $("refine-row").hidden ? 0 : Number($("refine_steps").value || 0);
}

// What a photo's result is made with (the painting aside), to tell a result made before a change from one after.
function photoSettings() {
  const mask = $("mask").files[0];
  return JSON.stringify([state.styles.map((st) => [st.name, st.weight]), $("alpha").value, $("preserve_color").value,
    refineSteps(), $("photo-size").value, $("format").value, $("keep_exif").checked, mask ? mask.name : ""]);
}

function photoOptions(data) {
  if (!$("refine-row").hidden) data.append("refine_steps", $("refine_steps").value || "0");
  data.append("size", $("photo-size").value);
  data.append("format", $("format").value);
  data.append("keep_exif", $("keep_exif").checked ? "1" : "0");
}

// POST ``data`` with XMLHttpRequest, which reports an upload's progress (fetch does not: a 1.5-MB photo on a slow
// line sat 33 s under "this takes a few seconds", with no Cancel): onUpload(fraction) as it goes out. The answer
// comes as a Response, read as fetch's is; ``signal`` aborts it (an AbortError, as fetch's), a failed connection
// is a TypeError, as fetch's.
function post(url, data, { signal, headers = {}, onUpload } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const aborted = () => reject(new DOMException("The upload was stopped.", "AbortError"));
    if (signal && signal.aborted) { aborted(); return; }
    xhr.open("POST", url);
    xhr.responseType = "blob";
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    if (onUpload) {
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && e.total) onUpload(e.loaded / e.total); };
      xhr.upload.onload = () => onUpload(1);
    }
    xhr.onload = () => {
      const answer = new Headers();
      for (const line of xhr.getAllResponseHeaders().split("\r\n")) {
        const at = line.indexOf(":");
        if (at > 0) answer.append(line.slice(0, at).trim(), line.slice(at + 1).trim());
      }
      const empty = [101, 204, 205, 304].includes(xhr.status);  // a Response of these takes no body
      resolve(new Response(empty ? null : xhr.response, { status: xhr.status, headers: answer }));
    };
    xhr.onerror = xhr.ontimeout = () => reject(new TypeError("The connection to the server failed."));
    xhr.onabort = aborted;
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(data);
  });
}

// An upload's progress, in the progress row (its Cancel stops it) once it has taken a moment: a small photo's
// upload is over before it could be read.
function uploadShown(started, what) {
  return (fraction) => {
    if (fraction >= 1 || performance.now() - started < 300) return;
    $("busy").hidden = true;
    $("progress-row").hidden = false;
    $("progress").max = 1;
    $("progress").value = fraction;
    sayProgress(`Uploading ${what}… ${Math.floor(fraction * 100)}%`);
  };
}

async function submit(event) {
  event.preventDefault();
  $("status").textContent = "";
  await stylize();
  settleFocus();
}

// Where focus goes once a stylization ends: Stylize is disabled while it runs, which drops focus to the page
// itself (the next Tab started from the top). An error is focused (read out, scrolled to), else the result's
// heading (Download next); where focus is still on a control, an error is only scrolled into view.
function settleFocus() {
  const error = [...document.querySelectorAll(".error")].find((e) => e.textContent && e.getClientRects().length);
  const lost = !document.activeElement || document.activeElement === document.body;
  if (error && lost) {
    error.tabIndex = -1;
    error.focus();
  } else if (error) {
    error.scrollIntoView({ block: "nearest" });
  } else if (lost && !$("result").hidden) {
    $("result-heading").focus({ preventScroll: true });  // (not back up from the stylized picture, revealOutput)
  }
}

async function stylize() {
  if (state.reading) return;  // pressed again while the painting is read (Stylize is disabled only after)
  if (live.stream || live.opening) stopLive();
  clearErrors();
  if (!state.content) { $("content-error").textContent = "Choose a photo first."; $("content").focus(); return; }
  if (!state.styles.length) { $("styles-error").textContent = "Choose at least one style."; return; }
  const refine = $("refine_steps");  // "abc" reads as "": it was sent as 0 and stylized unrefined, without a word
  if (!$("refine-row").hidden && !refine.validity.valid) {
    $("refine_steps-error").textContent = `Type a whole number of steps from 0 (off) to ${refine.max}.`;
    refine.focus();
    return;
  }
  $("pair").hidden = batch.files.length > 1;
  $("batch-results").hidden = $("download-all").hidden = true;
  if (batch.files.length > 1) { await submitBatch(); return; }
  if (state.video) { await submitVideo(); return; }
  const over = overUpload(state.content);
  if (over) { $("content-error").textContent = over; return; }
  const data = commonForm();
  const sent = [...state.styles];  // an error names a style by its place in these
  const made = photoSettings();  // a preset clicked during the call showed its result under the new styles
  const content = state.content;  // another one chosen meanwhile: this result is not shown beside it
  if ($("mask").files[0]) data.append("mask", $("mask").files[0]);
  state.reading = true;  // a big painting takes a moment to read
  let regions;
  try { regions = await labelsImage(); } finally { state.reading = false; }
  if (regions) {
    if ($("mask").files[0]) {
      $("labels-error").textContent = "Use either a mask or painted regions, not both: remove the mask, or clear the painting.";
      return;
    }
    if (regions.missing.length) {
      for (const i of regions.missing) {
        $(`style-error-${i}`).textContent = "Paint where this style goes (its colour is on the brushes), or remove it.";
      }
      return;
    }
    data.append("labels", regions.blob, "regions.png");
    for (const style of state.styles) data.append("label", style.colour);
  }
  photoOptions(data);

  const button = $("submit");
  button.disabled = true;
  button.textContent = "Stylizing…";
  revealResult();
  $("result").setAttribute("aria-busy", "true");
  $("busy").hidden = false;
  $("download").hidden = true;
  const request = state.request = new AbortController();
  const steps = refineSteps();
  const id = requestId();
  const show = (p) => {
    $("busy").hidden = true;
    $("progress-row").hidden = false;
    $("progress").max = p.steps;
    $("progress").value = p.step;
    sayProgress(steps > 0 ? `Refining: step ${p.step} of ${p.steps}` : `Large photo: part ${p.step} of ${p.steps}`);
  };
  if (steps > 0) show({ step: 0, steps });
  const img = $("original");
  const [w, h] = img.getAttribute("src") ? [img.naturalWidth, img.naturalHeight] : [0, 0];
  const stopFollowing = hasSteps(steps, w, h) ? followSteps(id, show) : () => {};
  const uploading = uploadShown(performance.now(), "the photo");
  let uploadSaid = false;
  const onUpload = (fraction) => {
    if (fraction < 1) { uploading(fraction); uploadSaid = !$("progress-row").hidden; return; }
    if (!uploadSaid) return;
    uploadSaid = false;
    if (steps > 0) { show({ step: 0, steps }); return; }  // the refine's steps, as before the upload
    $("progress-row").hidden = true;  // sent: the spinner, until a large photo's parts (if any) come
    $("busy").hidden = false;
  };
  try {
    const response = await post("/api/stylize", data, { signal: request.signal, headers: { "X-Request-Id": id },
                                                        onUpload });
    if (state.request !== request) return;  // another press since: only the last one's answer is shown
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (e) { /* not JSON */ }
      showError(body, response.status, sent);
      $("output").removeAttribute("src");
      return;
    }
    const blob = await response.blob();
    if (state.content !== content || state.request !== request) return;
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    $("output").addEventListener("load", () => revealOutput($("output")), { once: true });  // (its height then)
    $("output").src = resultUrl;
    $("download").href = resultUrl;
    $("download").download = resultName(stemOf(content), suffix(blob));  // as several photos' and a clip's
    $("download").hidden = false;
    $("status").textContent = photoSettings() === made ? "Done: the stylized photo is under Result, with Download."
      : "Done, with the settings as they were when Stylize was pressed (changed since: press Stylize again for the "
        + "new ones). The stylized photo is under Result, with Download.";
  } catch (e) {
    if (e.name !== "AbortError") $("form-error").textContent = "The page lost its connection to the server. Try again.";
  } finally {
    stopFollowing();
    if (state.request === request) state.request = null;
    if (!state.request) {  // (a newer press's call still running keeps its button, spinner and bar)
      button.disabled = false;
      button.textContent = "Stylize";
      $("busy").hidden = true;
      if (!state.job && !batch.running) $("progress-row").hidden = true;
      $("result").setAttribute("aria-busy", "false");
    }
  }
}

// A refine, or a photo over the server's tile threshold (rendered in parts: its statistics, then its tiles),
// takes seconds to minutes: its steps are shown as the server reports them, and Cancel (or leaving the page)
// stops the server's job, which held the only long-job place until its deadline. Other photos keep the spinner.
function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // randomUUID needs https; this works on http too
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Whether this photo's call reports steps: a refine, or a photo over the server's tile threshold at the size
// asked for (with a margin: the page scales as the server does, to a pixel or so). Any other call reports
// none, and each poll that ends after it (the server down: its 503 after about 1.3 s of retries) was a 404 in
// the browser's console. Where the threshold or the photo's size (w x h; 0 unknown) is not known, it follows.
function hasSteps(steps, w, h) {
  const threshold = state.info && state.info.tile_threshold_pixels;
  if (steps > 0 || !threshold || !w || !h) return true;
  const side = Number($("photo-size").value || 0);
  const scale = side > 0 ? Math.min(1, side / Math.max(w, h)) : 1;
  return w * scale * h * scale > 0.9 * threshold;
}

// A photo file's width and height, [0, 0] where the browser cannot decode it (the server says why).
async function pixelSize(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const size = [bitmap.width, bitmap.height];
    bitmap.close();
    return size;
  } catch (e) {
    return [0, 0];
  }
}

// GET /api/progress/ID every half second, each step the server has reported handed to onStep, until the
// function it returns is called (0 steps: nothing reported yet; a photo rendered whole never reports). The first
// poll waits a second: a photo done sooner has no steps to show, and each poll outside its call (404) was an
// error line in the browser's console, for every small photo.
function followSteps(id, onStep) {
  let following = true;
  (async () => {
    await sleep(500);
    while (following) {
      await sleep(500);
      try {
        const reply = await fetch(`/api/progress/${id}`);
        if (!reply.ok || !following) continue;  // not started yet, or done
        const p = await reply.json();
        if (p.steps > 0 && following) onStep(p);
      } catch (e) { /* the next poll tries again */ }
    }
  })();
  return () => { following = false; };
}

// --- clips: a job on the server, followed until it is done ---------------------------------------------
function videoForm() {
  const data = commonForm();
  data.append("temporal", $("temporal").value);
  data.append("size", $("size").value);
  data.append("fps", $("fps").value);
  data.append("start", $("start").value || "0");
  data.append("duration", $("duration").value);
  return data;
}

function videoBusy(busy) {
  $("submit").disabled = busy;
  $("submit").textContent = busy ? "Stylizing…" : "Stylize";
  $("progress-row").hidden = !busy;
  $("result").setAttribute("aria-busy", String(busy));
}

// The result area shown and, on a small screen where it starts below the fold, scrolled to (on a phone the
// Stylize button is at the bottom, and nothing seemed to happen).
function revealResult() {
  $("result").hidden = false;
  requestAnimationFrame(() => {  // measured once the caller has shown what it shows under it (a batch's bar and
    // Cancel, shown after this call, stayed below a phone's screen: the page was too short to scroll yet)
    if ($("result").getBoundingClientRect().top > window.innerHeight * 0.75) {
      $("result").scrollIntoView({ behavior: "smooth", block: "start" });
    }
  });
}

// The stylized picture or clip, once it comes: on a phone the figures stack, the stylized one under the photo,
// and the screen showed the unchanged photo while "Done" said the result was under Result (its top at y 790 of 844;
// at 360 x 740 below the screen). Scrolled to where its top is not in the upper half of the screen, once it has its
// height (the page is too short to scroll it up before).
function revealOutput(element) {
  const box = element.closest("figure") || element;
  const top = box.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.5) box.scrollIntoView({ behavior: "smooth", block: "start" });
}

// Unload the stylized clip.
function clearOutputVideo() {
  unloadVideo($("output-video"));
  $("output-video").hidden = true;
}

// Taking a player's src away alone leaves the last clip loaded (and playing).
function unloadVideo(video) {
  video.pause();
  video.removeAttribute("src");
  video.load();
}

// A long job's progress, shown, and said to a screen reader every PROGRESS_SAID_MS: the result area is busy
// while it runs (nothing in it is read out), so a minutes-long clip was silent until "Done".
const PROGRESS_SAID_MS = 10000;
let progressSaid = -Infinity;

function sayProgress(text) {
  $("progress-text").textContent = text;
  if (performance.now() - progressSaid >= PROGRESS_SAID_MS) {
    progressSaid = performance.now();
    $("status").textContent = text;
  }
}

function showProgress(job) {
  const total = job.total || 0;
  $("progress").max = Math.max(total, 1);
  if (total) $("progress").value = job.done; else $("progress").removeAttribute("value");
  sayProgress(total ? `Frame ${job.done} of ${total}` : `Frame ${job.done}`);
}

async function submitVideo() {
  if (!state.info.video) {
    $("content-error").textContent = "This page was installed without video support: choose a photo.";
    return;
  }
  revealResult();
  $("download").hidden = true;
  clearOutputVideo();  // the last clip's result goes while this one runs
  videoBusy(true);
  let mine = null;  // this call's job: another may have started by the time it ends (after a Cancel)
  const content = state.content;  // another one chosen meanwhile: this clip's result is not shown beside it
  // The upload (up to minutes): Cancel, or another content chosen, stops it (there is no job to cancel yet).
  // Once the server has answered, its answer is read to the end (it names the job, then cancelled).
  const sending = new AbortController();
  const upload = state.upload = { stopped: false, answered: false,
    abort() { this.stopped = true; if (!this.answered) sending.abort(); } };
  await dropOrphans();  // a clip this page lost track of would have it refused as "another clip" (its own)
  try {
    const started = performance.now();
    const onUpload = (fraction) => {  // the bar shows the upload, then the frames
      if (fraction >= 1 || performance.now() - started < 300 || state.upload !== upload) return;
      $("progress").max = 1;
      $("progress").value = fraction;
      sayProgress(`Uploading the clip… ${Math.floor(fraction * 100)}%`);
    };
    const response = await post("/api/videos", videoForm(), { signal: sending.signal, onUpload });
    upload.answered = true;
    let job = null;
    try { job = await response.json(); } catch (e) { /* not JSON */ }
    if (upload.stopped || state.content !== content) {  // stopped as the upload ended: so is its job
      if (response.status === 202 && job) fetch(`/api/videos/${job.id}`, { method: "DELETE" }).catch(() => {});
      return;
    }
    state.upload = null;
    if (response.status === 429) {  // not "the server is busy": the page's own clip places, said by the page
      $("form-error").textContent = (job && job.error && job.error.message) ||
        "Another clip is being stylized right now. Try again when it is done.";
      videoBusy(false);
      return;
    }
    if (response.status !== 202) { showError(job, response.status); videoBusy(false); return; }
    state.job = mine = job.id;
    showProgress(job);
    const cancelled = () => state.job !== mine;  // Cancel pressed: cancelVideo has said so, stop asking
    // A poll that gets no answer (a network blip, adain-web restarting, a proxy's 502) is tried again each second
    // for up to RECONNECT_MS: one failed poll ended the page's job while the clip ran on, unseen, and its place
    // refused the visitor's next try as "another clip".
    let failingSince = null;
    while (job.state === "running" && !cancelled()) {
      await sleep(1000);
      if (cancelled()) return;
      let poll = null;
      let polled = null;
      try {
        poll = await fetch(`/api/videos/${job.id}`);
        polled = poll.ok ? await poll.json() : null;
      } catch (e) { poll = null; /* no answer: tried again below */ }
      if (cancelled()) return;
      if (polled) {
        job = polled;
        failingSince = null;
        showProgress(job);
        continue;
      }
      if (poll && poll.status === 404) {  // adain-web restarted (its jobs go with it), or forgot this one
        $("form-error").textContent = "The clip was lost: the page's server restarted (or forgot it) while it was "
          + "being stylized. Press Stylize to send it again.";
        job = null;
        break;
      }
      if (poll && poll.status < 500) {  // an answer that will not change (not a server that is away)
        let body = null;
        try { body = await poll.json(); } catch (e) { /* not JSON */ }
        showError(body, poll.status);
        job = null;
        break;
      }
      failingSince = failingSince === null ? performance.now() : failingSince;
      if (performance.now() - failingSince >= RECONNECT_MS) {
        forgetJob(job.id);  // stopped on the server as soon as it answers again (best effort)
        $("form-error").textContent = `The page lost its connection to the server for ${RECONNECT_MS / 1000} s `
          + "and stopped the clip. Check the connection, then press Stylize to send it again.";
        job = null;
        break;
      }
      sayProgress(`Reconnecting to the server… (frame ${job.done}${job.total ? ` of ${job.total}` : ""} so far)`);
    }
    if (!job || cancelled() || state.content !== content) return;
    if (job.state === "done") {
      const video = $("output-video");
      video.addEventListener("loadedmetadata", () => revealOutput(video), { once: true });
      video.src = job.result;
      video.hidden = false;
      $("download").href = job.result;
      $("download").download = job.filename;
      $("download").hidden = false;
      $("status").textContent = "Done: the stylized clip is under Result, with Download.";
    } else if (job.state === "failed") {
      showError({ error: job.error }, errorStatus(job.error));
    } else if (job.state === "cancelled") {  // not by this page: abandoned, or adain-web stopping
      $("form-error").textContent = (job.error && job.error.message) || "Cancelled.";
    }
  } catch (e) {
    if (e.name !== "AbortError") $("form-error").textContent = "The page lost its connection to the server. Try again.";
  } finally {
    if (state.upload === upload) state.upload = null;
    if (state.job === mine) state.job = null;
    // (a photo's call or a batch started since: Stylize stays theirs. A clip's loop that woke after the clip was
    // replaced by a photo re-enabled it mid-call, a second press followed, and the older result was shown last)
    if (state.job === null && state.upload === null && !state.request && !batch.running) videoBusy(false);
  }
}

// How long a running clip's page keeps asking a server that does not answer before it gives the clip up. (let:
// the tests shorten it.)
let RECONNECT_MS = 30000;
// Clips this page gave up following: deleted once the server answers (they held its clip place, refusing the
// visitor's next try), asked again every few seconds for as long as the server keeps an unwatched clip.
const orphans = new Set();

function forgetJob(id) {
  orphans.add(id);
  (async () => {
    for (let tries = 0; tries < 60 && orphans.has(id); tries++) {
      await deleteJob(id);
      if (orphans.has(id)) await sleep(5000);
    }
    orphans.delete(id);
  })();
}

// DELETE a clip; once the server has answered it (204, or 404: gone already), it is no orphan.
async function deleteJob(id) {
  try {
    const reply = await fetch(`/api/videos/${id}`, { method: "DELETE" });
    if (reply.status < 500) orphans.delete(id);
  } catch (e) { /* no answer: asked again */ }
}

async function dropOrphans() {
  await Promise.all([...orphans].map(deleteJob));
}

// "Cancelled." said and focused: Cancel, just pressed, is hidden, and focus fell past the end of the page.
function sayCancelled() {
  const said = $("form-error");
  said.textContent = "Cancelled.";
  said.tabIndex = -1;
  said.focus();
}

async function cancelVideo() {
  if (state.request && !batch.running) {  // a photo's refine or tiles: the server stops at its next step
    state.request.abort();
    $("progress-row").hidden = true;
    sayCancelled();
    return;
  }
  if (batch.running) {
    batch.cancelled = true;  // no more are sent, and the photo on its way is stopped (a large one takes minutes)
    if (batch.request) batch.request.abort();
    sayCancelled();
    return;
  }
  if (state.upload) {  // the clip still uploading: no job has started
    state.upload.abort();
    state.upload = null;
    videoBusy(false);
    sayCancelled();
    return;
  }
  const id = state.job;
  if (!id) return;
  state.job = null;  // the polling loop stops; the server stops after the frame in flight
  videoBusy(false);  // at once: Stylize waited for the loop's next second
  clearOutputVideo();
  sayCancelled();
  // until the server answers: cancelled while reconnecting, the DELETE was lost and the clip held its place
  forgetJob(id);
}

// --- several photos: stylized one after another, shown together, saved as one zip ------------------------
// run: the run whose results are shown (null once forgotten); urls: its images' (revoked with them)
const batch = { files: [], results: [], running: false, cancelled: false, run: null, urls: [], request: null };
const MAX_BATCH = 100;

function setBatch(files) {
  clearErrors();
  if (files.some(isVideo)) {
    $("content-error").textContent = "Choose one clip, or several photos without clips among them.";
    return;
  }
  if (files.length > MAX_BATCH) {
    $("content-error").textContent = `At most ${MAX_BATCH} photos at once.`;
    return;
  }
  if (live.stream || live.opening) stopLive();
  forgetResult();
  batch.files = files;
  state.content = files[0];
  state.video = false;
  $("original").removeAttribute("src");  // the last single photo was left as "Original" beside an empty result
  unloadVideo($("original-video"));
  if (originalUrl) { URL.revokeObjectURL(originalUrl); originalUrl = null; }
  const names = files.slice(0, 3).map((f) => f.name).join(", ") + (files.length > 3 ? ", …" : "");
  $("content-name").textContent = `${files.length} photos: ${names}`;
  // a mask or a painting fits one photo; the size, rate and steadiness are a clip's
  $("size-row").hidden = $("temporal-row").hidden = $("fps-row").hidden = $("trim-row").hidden = true;
  $("mask-row").hidden = $("regions-row").hidden = true;
  resetPainter(null);
  $("refine-row").hidden = !state.info.max_refine_steps;
  $("exif-row").hidden = $("format-row").hidden = $("photo-size-row").hidden = false;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// The last run's images and their Download links taken away, and their URLs released.
function clearBatchResults() {
  $("batch-results").replaceChildren();
  batch.urls.forEach((url) => URL.revokeObjectURL(url));
  batch.urls = [];
}

async function submitBatch() {
  const grid = $("batch-results");
  clearBatchResults();
  grid.hidden = false;
  revealResult();
  $("download").hidden = true;
  const run = batch.run = {};  // forgetResult forgets it: what it still brings is not recorded
  batch.results = [];
  batch.cancelled = false;
  batch.running = true;
  let stopped = null;  // why, where an error not a photo's own stopped the run
  videoBusy(true);  // the progress row, with Cancel
  $("progress").max = batch.files.length;
  $("progress").value = 0;
  try {
    for (const [i, file] of batch.files.entries()) {
      if (batch.cancelled) break;
      const which = `Photo ${i + 1} of ${batch.files.length}`;
      sayProgress(which);
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = file.name;
      const shown = () => {  // this photo's result or error, in the grid
        figure.append(caption);
        grid.append(figure);
        $("progress").value = i + 1;
      };
      const over = overUpload(file);
      if (over) {  // not sent: this photo's fault, the others go on
        caption.textContent = `${file.name}: ${over}`;
        caption.className = "error";
        shown();
        continue;
      }
      // its size, read here: each photo of a run was followed, its polls 404s in the console for a small one
      const [w, h] = await pixelSize(file);
      if (batch.cancelled || batch.run !== run) break;  // Cancel (or a new choice) while its size was read
      let response;
      for (let tries = 0; ; tries++) {  // a busy server (429) is asked again a moment later
        const data = commonForm(file);
        photoOptions(data);
        const id = requestId();  // a large photo's parts (or a refine's steps) shown beside its number
        const stopFollowing = hasSteps(refineSteps(), w, h) ? followSteps(id, (p) => {
          if (batch.run === run) sayProgress(`${which}: ${p.step} of ${p.steps} done`);
        }) : () => {};
        batch.request = new AbortController();  // Cancel stops this photo too: the server drops it at its next step
        const sent = performance.now();
        const onUpload = (fraction) => {  // a large photo on a slow line: its upload's share, then its number
          if (batch.run !== run || performance.now() - sent < 300) return;
          sayProgress(fraction < 1 ? `${which}: uploading… ${Math.floor(fraction * 100)}%` : which);
        };
        try {
          response = await post("/api/stylize", data, { signal: batch.request.signal, onUpload,
                                                        headers: { "X-Request-Id": id } });
        } finally {
          stopFollowing();
          batch.request = null;
        }
        if (batch.run === run) sayProgress(which);
        if (response.status !== 429 || tries >= 30) break;
        await sleep(1000 * Number(response.headers.get("Retry-After") || 1));
        if (batch.cancelled || batch.run !== run) break;  // Cancel while waiting: this photo is not sent again
      }
      if (batch.run !== run || (batch.cancelled && response.status === 429)) break;
      if (response.ok) {
        const blob = await response.blob();
        if (batch.run !== run) break;  // forgotten (another content chosen) while it came
        const name = resultName(stemOf(file), suffix(blob), batch.results.map((r) => r.name));
        batch.results.push({ name, blob });
        const img = document.createElement("img");
        img.src = URL.createObjectURL(blob);
        batch.urls.push(img.src);
        img.alt = `${file.name}, stylized`;
        const link = document.createElement("a");
        link.href = img.src;
        link.download = name;
        link.textContent = "Download";
        link.className = "button";  // a tap target, not a 72 x 16 px link
        figure.append(img);
        caption.append(" ", link);
      } else {
        let body = null;
        try { body = await response.json(); } catch (e) { /* not JSON */ }
        if (batch.run !== run) break;
        const message = body && body.error && body.error.message;
        const fields = ((body && body.error && body.error.violations) || []).map((v) => v.field);
        // this photo's fault: a content error, or too large (its upload, or its result for the reply limit)
        const photos = response.status === 413 || (response.status === 400 &&
          (fields.length ? fields.every((f) => f === "content") : /^content\b/.test(message || "")));
        if (!message || !photos) {  // not this photo's fault (an option's, a busy or lost server): stop, say why
          showError(body, response.status);
          stopped = response.status === 400 ? "an option was refused (see its error)" : "see the error";
          break;
        }
        caption.textContent = `${file.name}: ${message.replace(/^content: /, "")}`;  // this photo only; others go on
        caption.className = "error";
      }
      shown();
    }
  } catch (e) {
    if (batch.run === run && e.name !== "AbortError") {
      $("form-error").textContent = "The page lost its connection to the server. Try again.";
    }
  } finally {
    batch.running = false;
    videoBusy(false);
    if (batch.run === run) {  // (forgotten: the page has moved on, and says nothing of this run)
      $("download-all").hidden = batch.results.length < 2;
      if (batch.results.length) revealOutput(grid);  // (the bar and Cancel stay in view while it runs)
      // stopped by an option's error: the count read "0 of 2 photos stylized, under Result" over an empty grid
      const done = `${batch.results.length} of ${batch.files.length} photos stylized`;
      $("status").textContent = stopped ? `Stopped: ${stopped}; ${done}.`
                                        : `${done}, under Result.`;
    }
  }
}

// A file's name without its suffix, the stem of its result's; no leading dot, which would hide the result on Unix
// (".beach.png" made ".beach_stylized.png"), as a clip's name has none (the server's clip_result_name).
function stemOf(file) {
  // as the server names a clip's (clip_result_name): the part after the last / or \ (a rooted path to a Windows
  // unzip), no control or format characters (a newline, a right-to-left override: a review's)
  const name = file.name.split(/[\\/]/).pop().replace(/[\p{Cc}\p{Cf}]/gu, "");
  return name.replace(/\.[^.]*$/, "").replace(/^[.\s]+/, "").trim() || "photo";
}

// The longest file name, in bytes of UTF-8: ext4's (APFS's and NTFS's, 255 characters, take any name that short).
const MAX_NAME_BYTES = 255;

// A result's file name, STEM_stylized.EXT, in NFC and at most MAX_NAME_BYTES (the stem cut on a character's
// boundary: a 250-byte photo's name made a zip entry unzip refused, "File name too long"); STEM_stylized_2.EXT
// where one of ``taken`` (the batch's names) is the same name to macOS's and Windows' file systems, which take
// "café" in NFC and in NFD, and "Photo" and "photo", for one: two entries of the zip overwrote each other there.
function resultName(stem, ext, taken = []) {
  const same = (name) => name.normalize("NFC").toLowerCase();
  const seen = new Set(taken.map(same));
  const encoder = new TextEncoder();
  for (let n = 1; ; n++) {
    const tail = n === 1 ? `_stylized.${ext}` : `_stylized_${n}.${ext}`;
    let room = MAX_NAME_BYTES - encoder.encode(tail).length;
    let kept = "";
    for (const c of stem.normalize("NFC")) {  // (by code point: a surrogate pair is never cut in two)
      room -= encoder.encode(c).length;
      if (room < 0) break;
      kept += c;
    }
    if (!seen.has(same(kept + tail))) return kept + tail;
  }
}

// A result's suffix from its own type (the reply's): "Save as" changed while it was made named a JPEG ".png".
function suffix(blob) {
  const byType = { "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp" }[blob.type];
  return byType || { jpeg: "jpg", png: "png", webp: "webp" }[$("format").value] || "png";
}

// A zip of the results, stored as they are (the images are compressed already), built here: nothing to install.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zipBlob(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { name, blob } of entries) {
    const data = new Uint8Array(await blob.arrayBuffer());
    const fname = encoder.encode(name.normalize("NFC"));  // (as resultName writes them)
    const crc = crc32(data);
    // local header (30 bytes) and central directory entry (46): version 2.0, UTF-8 names, stored, 1980-01-01,
    // made on Unix as a file of mode 0644 (made "on MS-DOS", Info-ZIP's unzip read the UTF-8 names as CP437:
    // café_stylized.png came out as caf+®_stylized.png)
    const local = new DataView(new ArrayBuffer(30));
    const entry = new DataView(new ArrayBuffer(46));
    local.setUint32(0, 0x04034b50, true);
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 0x0314, true);
    entry.setUint32(38, 0o100644 * 0x10000, true);
    for (const [view, at] of [[local, 4], [entry, 6]]) {
      view.setUint16(at, 20, true);
      view.setUint16(at + 2, 0x0800, true);
      view.setUint16(at + 8, 0x21, true);
      view.setUint32(at + 10, crc, true);
      view.setUint32(at + 14, data.length, true);
      view.setUint32(at + 18, data.length, true);
      view.setUint16(at + 22, fname.length, true);
    }
    entry.setUint32(42, offset, true);
    parts.push(local, fname, data);
    central.push(entry, fname);
    offset += 30 + fname.length + data.length;
  }
  const size = central.reduce((n, part) => n + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

async function downloadAll() {
  saveBlob(await zipBlob(batch.results), "stylized.zip");
}

// Save a blob the page made as a file named ``name`` (the browser's download).
function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

// --- the live camera: frames over a WebSocket into one server stream, stylized frames back ----------------
// size: the session's frames' [width, height] (the server takes no other size in a session)
const live = { ws: null, stream: null, inFlight: 0, frames: 0, started: 0, grab: null, session: 0, size: null,
               opening: false };
const LIVE_IN_FLIGHT = 2;  // frames on their way at once: the rate follows the server's, the delay stays short
const LIVE_RETRIES = 2;  // a restart refused for a full server is tried again a second later, this many times

function liveSupported() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.WebSocket);
}

function showLive(on) {
  // the camera off: the result shown before it comes back (a photo's or a clip's with its Download: it came back
  // without one, or several photos' grid)
  const several = !on && batch.files.length > 1 && batch.results.length > 0;
  $("pair").hidden = several;
  $("batch-results").hidden = !several;
  $("download-all").hidden = !several || batch.results.length < 2;
  $("live-row").hidden = $("live-camera").hidden = $("live-output").hidden = !on;
  $("output").hidden = on || state.video;
  $("output-video").hidden = on || !state.video;
  $("original").hidden = on || !originalIsPicture();
  $("original-video").hidden = on || originalIsPicture();
  $("temporal-row").hidden = !(on || state.video);
  $("mask-row").hidden = $("regions-row").hidden = on || state.video;  // a photo's options, not the camera's
  $("refine-row").hidden = on || state.video || !state.info.max_refine_steps;
  $("exif-row").hidden = $("format-row").hidden = $("photo-size-row").hidden = on || state.video;  // (live size: its own)
  $("download").hidden = on || several || !(state.video ? $("output-video").getAttribute("src") : resultUrl);
  $("original-caption").textContent = on ? "Camera" : "Original";
  if (on) $("result").hidden = false;
}

async function startLive() {
  clearErrors();
  if (!state.styles.length) { $("styles-error").textContent = "Choose at least one style first."; return; }
  if (live.opening) return;  // pressed again while the camera opens (its prompt): a second stream was never stopped
  stopRunning();  // a photo, clip or batch still running: its result appeared inside the live view
  if (!live.stream) {
    const session = live.session;
    let stream;
    live.opening = true;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    } catch (e) {
      $("content-error").textContent = `The camera could not be opened (${e.name}): allow the page to use it.`;
      return;
    } finally {
      live.opening = false;
    }
    if (live.session !== session) {  // left while it opened (a photo chosen, Stop): the camera goes off again
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    live.stream = stream;
    $("live-camera").srcObject = live.stream;
    await $("live-camera").play();
  }
  showLive(true);
  revealResult();  // on a phone the camera's view is screens below its button: nothing seemed to happen
  openLive(0);
}

// A new session with the options as they are now (a change of style, strength or size starts one).
// retries: a restart's session refused as the server is full (1013, before any frame) is tried again a second
// later, this many times: the session just closed may hold its place on the server a moment longer.
async function openLive(retries = LIVE_RETRIES) {
  closeLive();
  const session = ++live.session;
  let refused = null;  // the server's refusal, said only if it is not tried again
  let said = false;  // the server said why the session ends
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/api/live`);
  ws.binaryType = "blob";
  live.ws = ws;
  live.inFlight = live.frames = 0;
  live.size = null;
  live.announced = false;
  $("live-status").textContent = "Connecting…";
  ws.onopen = async () => {
    ws.send(JSON.stringify({
      styles: state.styles.map((s) => s.ref || "upload"),
      weights: state.styles.map((s) => s.weight),
      alpha: Number($("alpha").value),
      preserve_color: $("preserve_color").value,
      temporal: $("temporal").value,
    }));
    for (const s of state.styles) {
      if (s.ref) continue;
      const bytes = await s.file.arrayBuffer();
      if (ws.readyState !== WebSocket.OPEN) return;  // refused or closed meanwhile (a send now is a console error)
      ws.send(bytes);
    }
    live.started = performance.now();
    for (let i = 0; i < LIVE_IN_FLIGHT; i++) sendFrame(ws);
  };
  ws.onmessage = async (event) => {
    if (typeof event.data === "string") {  // the server's error: the session ends
      let body = null;
      try { body = JSON.parse(event.data); } catch (e) { /* not JSON */ }
      const error = body && body.error;
      if (!live.frames && error && error.code === "RESOURCE_EXHAUSTED") { refused = body; return; }
      said = true;
      showError(body, errorStatus(error));
      return;
    }
    live.inFlight -= 1;
    live.frames += 1;
    const bitmap = await createImageBitmap(event.data);
    // paused, stopped or replaced while the frame was decoded: drawn, it would put back "Live" over "Paused"
    if (session !== live.session) { bitmap.close(); return; }
    const canvas = $("live-output");
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();  // (its memory, at once: not when it is collected)
    canvas.dataset.frames = String(live.frames);
    // the rate, rewritten at every frame, is not read out (it would be, several times a second); its start is
    if (!live.announced) {  // (once a session: two frames in flight both counted before either was drawn)
      live.announced = true;
      $("status").textContent = "Live: the stylized camera is under Result.";
    }
    const rate = live.frames / ((performance.now() - live.started) / 1000);
    $("live-status").textContent = `Live: ${rate.toFixed(1)} frames a second`;
    sendFrame(ws);
  };
  ws.onclose = (event) => {
    if (session !== live.session) return;  // replaced by a newer session
    live.ws = null;
    if (refused && retries && event.code === 1013) {  // (the status still says "Connecting…")
      setTimeout(() => { if (session === live.session && live.stream) openLive(retries - 1); }, 1000);
      return;
    }
    // However it ends, the camera is let go and the controls are the page's again (the preview played on, the
    // camera's light on, with Save and Stop shown, after the server went away)
    const focused = $("live-row").contains(document.activeElement);
    stopLive();
    if (focused) $("live-start").focus();
    if (refused) {  // in the server's words: "you have a live camera session running already (one a visitor)"
      $("form-error").textContent = "The live camera is busy: it is on in another tab or window of yours (stop "
        + "it there), or the server is full. Try again in a moment.";
    } else if (!said) {
      $("form-error").textContent = "The live camera stopped: the connection to the server was lost. "
        + "Press Live camera to start it again.";
    }
    $("status").textContent = "Stopped.";
  };
}

function sendFrame(ws) {
  const video = $("live-camera");
  if (ws.readyState !== WebSocket.OPEN || live.inFlight >= LIVE_IN_FLIGHT) return;
  if (!video.videoWidth) { setTimeout(() => sendFrame(ws), 100); return; }
  const side = Number($("live-size").value);
  const scale = Math.min(1, side / Math.max(video.videoWidth, video.videoHeight));
  const width = Math.max(8, Math.round(video.videoWidth * scale));
  const height = Math.max(8, Math.round(video.videoHeight * scale));
  // the camera turned, or its resolution changed: the server refuses a frame of another size, so a new session
  if (live.size && (live.size[0] !== width || live.size[1] !== height)) { openLive(); return; }
  live.size = [width, height];
  live.grab = live.grab || document.createElement("canvas");
  live.grab.width = width;
  live.grab.height = height;
  live.grab.getContext("2d").drawImage(video, 0, 0, live.grab.width, live.grab.height);
  live.inFlight += 1;
  live.grab.toBlob((blob) => { if (ws.readyState === WebSocket.OPEN) ws.send(blob); }, "image/jpeg", 0.85);
}

function closeLive() {
  if (!live.ws) return;
  live.ws.onopen = live.ws.onmessage = live.ws.onclose = null;  // a late frame of this session is not counted
  live.ws.close();
  live.ws = null;
}

function stopLive() {
  live.session += 1;
  closeLive();
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  $("live-camera").srcObject = null;
  showLive(false);
}

// The stylized picture on screen now, as a PNG download.
function saveSnapshot() {
  const canvas = $("live-output");
  if (!canvas.dataset.frames) return;
  canvas.toBlob((blob) => saveBlob(blob, "stylized-live.png"), "image/png");
}

// While live, a changed option starts a new session with it; with no style left the session ends (it went on in
// the style removed), the camera kept, until a style is chosen again.
function liveChanged() {
  if (!live.stream) return;
  if (state.styles.length) { openLive(); return; }
  live.session += 1;
  closeLive();
  $("live-status").textContent = $("status").textContent = "Paused: choose a style to go on.";
}

// A HEIC photo or an HEVC clip (what iPhones make) reaches the server fine, but many browsers cannot show it.
function noPreview() {
  $("original").removeAttribute("src");  // no broken-image icon; the server says whether it reads the file
  $("original-caption").textContent = "Original (this browser cannot show it)";
}

function init() {
  $("cancel").addEventListener("click", cancelVideo);
  // Leaving the page for good (a reload, a closed tab) cancels its clip, which would hold the only clip slot
  // for minutes and tell the reloaded page the server is busy; a page kept for Back (persisted) goes on.
  window.addEventListener("pagehide", (e) => {
    if (e.persisted) return;
    for (const id of [state.job, ...orphans]) if (id) fetch(`/api/videos/${id}`, { method: "DELETE", keepalive: true });
  });
  $("live-start").hidden = !liveSupported();
  $("live-start").addEventListener("click", startLive);
  $("live-stop").addEventListener("click", () => {
    stopLive();
    $("live-start").focus();  // (Stop is hidden with the camera's row: focus fell off the page)
  });
  $("live-snapshot").addEventListener("click", saveSnapshot);
  $("download-all").addEventListener("click", downloadAll);
  for (const id of ["alpha", "preserve_color", "temporal", "live-size"]) $(id).addEventListener("change", liveChanged);
  $("original").addEventListener("error", () => { if ($("original").getAttribute("src")) noPreview(); });
  $("original-video").addEventListener("error", noPreview);
  $("content").addEventListener("change", (e) => setFiles(e.target.files));
  // the mask chosen is named, and can be taken back (Firefox and Safari offer no way to empty a file input)
  $("mask").addEventListener("change", showMask);
  $("mask-clear").addEventListener("click", () => {
    $("mask").value = "";
    showMask();
    $("mask-error").textContent = $("labels-error").textContent = "";
    $("mask").focus();  // the button gone, the focus goes to where another mask is chosen
  });
  $("camera").addEventListener("change", (e) => setFiles(e.target.files));
  $("camcorder").addEventListener("change", (e) => setFiles(e.target.files));
  $("style-upload").addEventListener("change", (e) => {
    for (const file of e.target.files) addStyle(file, file.name, null);
    e.target.value = "";
  });
  $("alpha").addEventListener("input", () => {
    $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
    markPresets();
  });
  $("preserve_color").addEventListener("change", markPresets);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setFiles(e.dataTransfer.files);
  });
  $("form").addEventListener("submit", submit);
  $("paint").addEventListener("click", togglePainter);
  $("paint-photo").addEventListener("load", photoShown);
  $("paint-clear").addEventListener("click", () => {
    const canvas = $("paint-canvas");
    paintContext().clearRect(0, 0, canvas.width, canvas.height);
    paint.painted = false;
  });
  $("brush-size").addEventListener("input", () => {
    paint.size = Number($("brush-size").value);
    $("brush-size-value").textContent = String(paint.size);
  });
  const canvas = $("paint-canvas");
  canvas.addEventListener("pointerdown", (e) => {
    paint.drawing = true;
    canvas.setPointerCapture(e.pointerId);
    strokeTo(pointerAt(e), true);
  });
  canvas.addEventListener("pointermove", (e) => { if (paint.drawing) strokeTo(pointerAt(e), false); });
  canvas.addEventListener("keydown", paintKey);
  canvas.addEventListener("focus", () => {  // the ring shows where the keyboard's brush is before a key moves it
    // (a keyboard's focus only: a click's drew it in the middle, away from where the mouse painted)
    if (paint.ready && canvas.width && canvas.matches(":focus-visible")) showBrushCursor();
  });
  canvas.addEventListener("blur", hideBrushCursor);
  for (const end of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(end, () => { paint.drawing = false; paint.last = null; });
  }
  loadInfo();
}

document.addEventListener("DOMContentLoaded", init);
