// Per-word view for pages with #viewer: the word's cross-attention over the crop
// (jet colours, scale per word, as --mode=explain draws it) and its experts per layer.
// A study's views each get their crop and overlay, one colour scale across the views
// (so they compare), and the share of the word's attention each view received.
(() => {
  "use strict";
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const $ = (id) => document.getElementById(id);
  const crops = [...viewer.querySelectorAll("img.crop")];
  const overlays = [...viewer.querySelectorAll("canvas.overlay")];
  const shares = [...viewer.querySelectorAll("figcaption .share")];
  const wordsEl = $("words"), expertsEl = $("experts");
  const layerSel = $("layer"), headSel = $("head");
  let view = null, current = -1, pinned = -1;

  const clamp = (v) => Math.min(1, Math.max(0, v));
  const jet = (v) => [1.5 - Math.abs(4 * v - 3), 1.5 - Math.abs(4 * v - 2),
                      1.5 - Math.abs(4 * v - 1)].map((c) => Math.round(255 * clamp(c)));

  function fillSelect(select, count, what, chosen) {
    if (select.options.length) return;
    const values = ["mean"].concat([...Array(count).keys()].map(String));
    for (const v of values) {
      const option = new Option(v === "mean" ? `mean of ${count} ${what}s` : `${what} ${v}`, v);
      option.selected = v === String(chosen);
      select.add(option);
    }
  }

  // attention[i] is [grid][grid], or [views][grid][grid] for a study.
  const grids = (i) => (view.num_views > 1 ? view.attention[i] : [view.attention[i]]);

  function drawAttention(i) {
    const perView = i < 0 ? [] : grids(i);
    const max = Math.max(1e-9, ...perView.map((grid) => Math.max(...grid.flat())));
    const total = perView.reduce((sum, grid) => sum + grid.flat().reduce((a, b) => a + b, 0), 0);
    overlays.forEach((overlay, v) => {
      const crop = crops[v], ctx = overlay.getContext("2d");
      overlay.width = crop.naturalWidth || 224;
      overlay.height = crop.naturalHeight || 224;
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      if (shares[v]) shares[v].textContent = "";
      if (i < 0) return;
      paint(ctx, overlay, perView[v], max);
      if (shares[v] && total > 0) {
        const sum = perView[v].flat().reduce((a, b) => a + b, 0);
        shares[v].textContent = `${Math.round(100 * sum / total)}% of “${view.words[i]}”`;
      }
    });
  }

  function paint(ctx, overlay, grid, max) {
    const n = grid.length;
    const cells = document.createElement("canvas");
    cells.width = cells.height = n;
    const cellCtx = cells.getContext("2d"), image = cellCtx.createImageData(n, n);
    grid.flat().forEach((value, k) => {
      image.data.set([...jet(value / max), 255], 4 * k);
    });
    cellCtx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.globalAlpha = 0.45;
    ctx.drawImage(cells, 0, 0, overlay.width, overlay.height);
  }

  function drawExperts(i) {
    expertsEl.replaceChildren();
    if (i < 0) return;
    const caption = document.createElement("p");
    caption.textContent = `“${view.words[i]}” (word ${i + 1}) was routed to:`;
    expertsEl.append(caption);
    view.experts[i].forEach((chosen, layer) => {
      const row = document.createElement("div");
      row.className = "layer";
      row.append(Object.assign(document.createElement("span"),
                               {className: "label", textContent: `decoder layer ${layer}`}));
      for (let e = 0; e < view.num_experts; e++) {
        const rank = chosen.indexOf(e);
        const cell = document.createElement("span");
        cell.className = rank < 0 ? "expert" : `expert chosen rank${rank}`;
        cell.textContent = e;
        cell.title = rank < 0 ? `expert ${e}` : `expert ${e}: choice ${rank + 1}`;
        row.append(cell);
      }
      expertsEl.append(row);
    });
  }

  function show(i) {
    current = i;
    wordsEl.querySelectorAll(".word").forEach((w, k) => {
      w.classList.toggle("active", k === i);
      w.setAttribute("aria-pressed", String(k === pinned));
    });
    drawAttention(i);
    drawExperts(i);
  }

  function renderWords() {
    wordsEl.replaceChildren();
    view.words.forEach((word, i) => {
      const button = Object.assign(document.createElement("button"),
                                   {type: "button", className: "word", textContent: word});
      button.addEventListener("mouseenter", () => show(i));
      button.addEventListener("focus", () => show(i));
      button.addEventListener("mouseleave", () => show(pinned));
      button.addEventListener("click", () => { pinned = pinned === i ? -1 : i; show(i); });
      wordsEl.append(button, " ");
    });
    if (!view.words.length) wordsEl.textContent = "(empty report)";
    if (view.after_eos) {
      wordsEl.append(Object.assign(document.createElement("span"), {className: "note",
        textContent: `(+${view.after_eos} word(s) after <eos> not explained)`}));
    }
  }

  async function load() {
    viewer.classList.add("loading");
    const query = new URLSearchParams({layer: layerSel.value || "", head: headSel.value || ""});
    const response = await fetch(`${viewer.dataset.viewUrl}?${query}`);
    const body = await response.json();
    viewer.classList.remove("loading");
    if (!response.ok) {
      expertsEl.textContent = body.error || response.statusText;
      return;
    }
    const first = view === null;
    view = body;
    fillSelect(layerSel, view.num_layers, "layer", view.layer);
    fillSelect(headSel, view.num_heads, "head", view.head);
    if (first) {
      renderWords();
      pinned = view.words.length ? 0 : -1;
    }
    show(current >= 0 ? current : pinned);
    viewer.dataset.ready = "true";
  }

  layerSel.addEventListener("change", load);
  headSel.addEventListener("change", load);
  Promise.all(crops.map((crop) => (crop.complete ? null : new Promise(
      (done) => crop.addEventListener("load", done, {once: true}))))).then(load);
})();
