// The page: draw on #pad (pointer events: mouse, pen, touch) or upload an image; each change
// is sent to POST api/predict, one request at a time (the latest drawing wins). Plain script,
// no libraries; every URL is relative to the page, so nothing is fetched from elsewhere.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const labelOut = document.getElementById("label");
const statusLine = document.getElementById("status");
const bars = document.getElementById("bars");
const BRUSH = 22; // px on the 280 px pad: strokes about as thick as MNIST's after scaling

// ---------------------------------------------------------------- the probability chart
const barFill = [];
const barText = [];
for (let digit = 0; digit < 10; digit++) {
  const item = document.createElement("li");
  item.innerHTML =
    `<span class="digit">${digit}</span><span class="track"><span class="fill"></span></span>` +
    `<span class="pct">&ndash;</span>`;
  bars.appendChild(item);
  barFill.push(item.querySelector(".fill"));
  barText.push(item.querySelector(".pct"));
}

function showResult(result) {
  labelOut.textContent = String(result.label);
  result.probabilities.forEach((p, digit) => {
    barFill[digit].style.width = `${(100 * p).toFixed(1)}%`;
    barText[digit].textContent = `${(100 * p).toFixed(1)}%`;
    bars.children[digit].classList.toggle("top", digit === result.label);
  });
  const pixels = seen.createImageData(28, 28);
  result.input.forEach((value, i) => {
    pixels.data.set([value, value, value, 255], 4 * i);
  });
  seen.putImageData(pixels, 0, 0);
  const best = (100 * result.probabilities[result.label]).toFixed(1);
  statusLine.textContent = `A ${result.label}, with probability ${best}%.`;
}

function clearResult(message) {
  labelOut.textContent = "?";
  barFill.forEach((fill) => { fill.style.width = "0"; });
  barText.forEach((text) => { text.textContent = "\u2013"; });
  bars.querySelectorAll(".top").forEach((item) => item.classList.remove("top"));
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  statusLine.textContent = message;
}

// ------------------------------------------------------------- asking the server
let pending = null; // what to send next: "pad" or a File
let busy = false;

function request(source) {
  pending = source;
  document.body.dataset.state = "busy";
  pump();
}

async function pump() {
  if (busy) return;
  while (pending !== null) {
    const source = pending;
    pending = null;
    busy = true;
    try {
      const file = source === "pad" ? await padImage() : source;
      await predict(file);
    } catch (error) {
      clearResult(`The server could not be reached (${error.message}).`);
    } finally {
      busy = false;
    }
  }
  document.body.dataset.state = "idle";
}

function padImage() {
  return new Promise((resolve) => pad.toBlob((blob) => resolve(blob), "image/png"));
}

async function predict(file) {
  const form = new FormData();
  form.append("file", file, file.name || "drawing.png");
  const response = await fetch("api/predict", { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: "The answer was not JSON." }));
  if (!response.ok) {
    clearResult(body.detail || `The server answered ${response.status}.`);
  } else if (pending === null) {
    showResult(body); // skip answers that a newer drawing has already made stale
  }
}

// ---------------------------------------------------------------------- drawing
let drawing = null; // the pointerId drawing now
let last = null;
let inked = false;
let showingUpload = false;

function resetPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = ink.fillStyle = "#111";
  ink.lineWidth = BRUSH;
  ink.lineCap = ink.lineJoin = "round";
  inked = showingUpload = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

function dot(at) {
  ink.beginPath();
  ink.arc(at.x, at.y, BRUSH / 2, 0, 2 * Math.PI);
  ink.fill();
}

function stroke(from, to) {
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  if (showingUpload) resetPad();
  pad.setPointerCapture(event.pointerId);
  drawing = event.pointerId;
  last = point(event);
  dot(last); // a tap leaves a mark too
  inked = true;
  request("pad");
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const next = point(each);
    stroke(last, next);
    last = next;
  }
  request("pad");
});

function stopDrawing(event) {
  if (event.pointerId !== drawing) return;
  drawing = null;
  request("pad");
}
pad.addEventListener("pointerup", stopDrawing);
pad.addEventListener("pointercancel", stopDrawing);

document.getElementById("clear").addEventListener("click", () => {
  resetPad();
  pending = null;
  clearResult("Draw one digit, as large as you like, anywhere on the square.");
  if (!busy) document.body.dataset.state = "idle";
});

// ----------------------------------------------------------------------- upload
document.getElementById("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // the same file can be chosen again
  if (!file) return;
  document.body.dataset.state = "busy"; // from now, not only once the preview is drawn
  resetPad();
  try { // show it on the pad, fitted; the server gets the original file
    const picture = await createImageBitmap(file);
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale;
    const h = picture.height * scale;
    ink.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    showingUpload = true;
  } catch (error) {
    // not an image the browser can show; the server will say what is wrong with it
  }
  request(file);
});

// --------------------------------------------------------------------- start-up
async function describeModel() {
  const line = document.getElementById("model");
  try {
    const response = await fetch("api/model");
    const info = await response.json();
    const names = info.checkpoints.map((c) => {
      const accuracy = c.val_accuracy == null ? "unknown" : `${(100 * c.val_accuracy).toFixed(2)}%`;
      return `${c.name} (${c.model}, validation accuracy ${accuracy})`;
    });
    const kind = names.length > 1 ? `An ensemble of ${names.length} models` : "The model";
    line.textContent = `${kind} on ${info.device}: ${names.join("; ")}.`;
  } catch (error) {
    line.textContent = "The server did not say which model answers.";
  }
}

resetPad();
clearResult(statusLine.textContent);
describeModel().finally(() => {
  if (!busy && pending === null) document.body.dataset.state = "idle";
});
