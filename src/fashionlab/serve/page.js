"use strict";
const state = JSON.parse(document.getElementById("state").textContent);
const model = state.model;
const results = document.getElementById("results");

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

(function describe() {
  const members = Array.isArray(model.config.ensemble) ? model.config.ensemble.length : 0;
  const parts = [`run ${model.run || model.source}`,
                 members ? `ensemble of ${members} runs` : `recipe ${model.config.name || model.name}`];
  if (typeof model.test_accuracy === "number") parts.push(`test accuracy ${(100 * model.test_accuracy).toFixed(2)} %`);
  parts.push(`${model.engine === "onnx" ? "ONNX Runtime" : "Keras"} model`);
  document.getElementById("about").textContent = parts.join(" · ");
  document.getElementById("title").textContent = `fashionlab · ${model.name}`;
  document.getElementById("curl").textContent = `curl -F image=@shoe.png ${location.origin}/api/predict`;
  document.getElementById("uncertainty").hidden = !model.mc_dropout;
})();

const MC_PASSES = 30;
const mc = document.getElementById("mc");

// a probability as a percentage; with MC dropout, ± its spread over the passes
function percent(p, spread) {
  return `${(100 * p).toFixed(1)} %` + (typeof spread === "number" ? ` ± ${(100 * spread).toFixed(1)}` : "");
}

// a box in place of an image not there (yet): an <img> without a picture shows a broken-image icon
function placeholder(text) {
  return el("div", { className: "placeholder", textContent: text });
}

function card(file, original, truth) {
  const seen = placeholder("reading…");
  const shown = el("img", { alt: "the original image", src: original });
  shown.addEventListener("error", () => shown.replaceWith(placeholder("no preview")), { once: true });
  const verdict = el("div", { className: "verdict" }, [el("span", { className: "class-name", textContent: "reading…" })]);
  const node = el("article", { className: "result" }, [
    el("figure", {}, [shown, el("figcaption", { textContent: "original" })]),
    el("figure", {}, [seen, el("figcaption", { textContent: "what the model saw" })]),
    el("div", {}, [el("div", { className: "file", textContent: file.replace(/\p{Cc}|\p{Cf}/gu, "") }),
                   truth ? el("div", { className: "truth", textContent: `true: ${truth}` }) : ""]),
    verdict,
  ]);
  results.prepend(node);
  return { node, seen, verdict, truth };
}

function show(view, result, ms) {
  view.seen.replaceWith(result.prepared
    ? el("img", { className: "seen", alt: "the 28 x 28 image the model saw", src: result.prepared })
    : placeholder("not read"));
  if (result.class_id === null) {  // no garment found: no class, and why
    view.verdict.replaceChildren(el("span", { className: "class-name", textContent: "no class" }),
                                 el("span", { className: "probability", textContent: `${ms} ms` }));
    view.node.append(el("p", { className: "note", textContent: result.hint }));
    if (view.truth) view.node.querySelector(".truth").classList.add("wrong");
    return;
  }
  view.verdict.replaceChildren(
    el("span", { className: "class-name", textContent: result.class_name }),
    el("span", { className: "probability", textContent: `${percent(result.probability, result.spread)} · ${ms} ms` }));
  const bars = el("div", { className: "bars" });
  for (const t of result.top_k) {
    const fill = el("span");
    fill.style.width = `${(100 * t.probability).toFixed(1)}%`;
    bars.append(el("div", { className: "bar-row" }, [
      el("span", { className: "bar-label", textContent: t.class_name }),
      el("div", { className: "bar", role: "meter", ariaValueNow: t.probability.toFixed(4), ariaLabel: t.class_name }, [fill]),
      el("span", { className: "bar-value", textContent: percent(t.probability, t.spread) })]));
  }
  view.node.append(bars);
  if (result.mirrored) view.node.append(el("p", { className: "note", textContent: "read mirrored: the data set's shoes all point left" }));
  if (result.turned) view.node.append(el("p", { className: "note", textContent: `read turned ${result.turned}° anticlockwise: it lay on its side` }));
  if (result.hint) view.node.append(el("p", { className: "note", textContent: result.hint }));
  if (typeof result.spread === "number") {
    view.node.append(el("p", { className: "spread", textContent: `mean of ${MC_PASSES} passes with dropout on; ± one standard deviation over them` }));
  }
  if (view.truth) {
    const mark = view.node.querySelector(".truth");
    mark.classList.add(view.truth === result.class_name ? "right" : "wrong");
  }
}

async function predict(blob, name, truth) {
  const view = card(name, URL.createObjectURL(blob), truth);
  const form = new FormData();
  form.append("image", blob, name);
  const started = performance.now();
  try {
    const passes = mc.checked && model.mc_dropout ? `&mc_dropout=${MC_PASSES}` : "";
    const answer = await fetch(`/api/predict?prepared=true&top_k=${state.top_k}${passes}`, { method: "POST", body: form });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || `the server answered ${answer.status}`);
    show(view, body[0], Math.round(performance.now() - started));
  } catch (error) {
    view.seen.replaceWith(placeholder("not read"));
    view.verdict.replaceChildren(el("p", { className: "error", textContent: error.message }));
  }
}

function predictFiles(files) {
  for (const file of files) predict(file, file.name || "pasted image");
}

const drop = document.getElementById("drop");
const input = document.getElementById("files");
input.addEventListener("change", () => { predictFiles(input.files); input.value = ""; });
for (const kind of ["dragenter", "dragover"]) drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); predictFiles(e.dataTransfer.files); });
document.addEventListener("paste", (e) => {
  const files = [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) predictFiles(files);
});

function pngBlob(dataUrl) {
  const bytes = atob(dataUrl.split(",")[1]);
  const array = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) array[i] = bytes.charCodeAt(i);
  return new Blob([array], { type: "image/png" });
}

const gallery = document.getElementById("gallery");
if (!state.gallery.length) document.getElementById("gallery-title").textContent = "Test images: the data set is not on this machine";
for (const item of state.gallery) {
  const button = el("button", { type: "button", title: `test image ${item.index}: ${item.label}` },
                    [el("img", { src: item.png, alt: `test image ${item.index}` }), el("span", { textContent: item.label })]);
  button.addEventListener("click", () => predict(pngBlob(item.png), `test-${item.index}.png`, item.label));
  gallery.append(button);
}
