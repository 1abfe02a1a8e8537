// The page of `gimp-rs view`: OpenSeadragon shows the slide's Deep Zoom tiles; the heatmap and
// patch grid are drawn here from the prediction's per-patch scores, as image layers over the
// slide; tissue outlines are the PNG `predict` wrote. `window.gimpView` exposes the state to the
// browser test (crates/gimp-view/web/test/browser.mjs).
'use strict';

const COLORMAPS = {
  // Dark to bright, so the brightest spot is the highest score.
  inferno: [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
  viridis: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
  // CLAM's diverging map (blue low, red high), as in `gimp-rs heatmap`'s PNG.
  coolwarm: [[59, 76, 192], [221, 221, 221], [180, 4, 38]],
};

const state = {
  slides: [],
  index: null,
  info: null,
  scores: null,
  buckets: null,
  layers: { heatmap: null, grid: null, tissue: null },
  selected: null,
  generation: 0,
};

const $ = (id) => document.getElementById(id);

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

function colour(map, t) {
  const stops = COLORMAPS[map] || COLORMAPS.inferno;
  const f = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(f), stops.length - 2);
  const u = f - i;
  return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * u));
}

const viewer = OpenSeadragon({
  id: 'viewer',
  prefixUrl: '/osd/images/',
  drawer: 'canvas',
  showNavigator: true,
  maxZoomPixelRatio: 4,
  animationTime: 0.4,
  gestureSettingsMouse: { clickToZoom: false },
});

function slideItem() {
  return viewer.world.getItemCount() > 0 ? viewer.world.getItemAt(0) : null;
}

function opacity() {
  return parseFloat($('opacity').value);
}

function setLayer(name, item) {
  const old = state.layers[name];
  if (old) viewer.world.removeItem(old);
  state.layers[name] = item;
}

function layerOpacity(name) {
  if (name === 'heatmap') return $('show-heatmap').checked ? opacity() : 0;
  if (name === 'grid') return $('show-grid').checked ? 1 : 0;
  return $('show-tissue').checked ? 1 : 0;
}

function addImageLayer(name, url) {
  const generation = state.generation;
  viewer.addTiledImage({
    tileSource: { type: 'image', url },
    x: 0,
    y: 0,
    width: 1,
    opacity: layerOpacity(name),
    success: (ev) => {
      if (generation !== state.generation) {
        viewer.world.removeItem(ev.item);
        return;
      }
      setLayer(name, ev.item);
    },
  });
}

// A canvas over the whole slide at `scale` canvas pixels per level-0 pixel.
function slideCanvas() {
  const s = state.scores;
  const [w0, h0] = [state.info.slide.levels[0].width, state.info.slide.levels[0].height];
  const perPatch = Math.max(1, Math.min(32, Math.floor(4096 / (Math.max(w0, h0) / s.patch_size_level0))));
  const scale = perPatch / s.patch_size_level0;
  const c = document.createElement('canvas');
  c.width = Math.max(1, Math.round(w0 * scale));
  c.height = Math.max(1, Math.round(h0 * scale));
  return [c, scale];
}

function drawHeatmap() {
  if (!state.scores) return;
  const s = state.scores;
  const [c, scale] = slideCanvas();
  const g = c.getContext('2d');
  const map = $('colormap').value;
  const side = s.patch_size_level0 * scale;
  // Lowest first, so where patches overlap the higher score is on top.
  const order = s.percentile.map((_, i) => i).sort((a, b) => s.percentile[a] - s.percentile[b]);
  for (const i of order) {
    const [r, gr, b] = colour(map, s.percentile[i]);
    g.fillStyle = `rgb(${r},${gr},${b})`;
    g.fillRect(s.x[i] * scale, s.y[i] * scale, side, side);
  }
  addImageLayer('heatmap', c.toDataURL('image/png'));
}

// The colour map as a CSS gradient, low (left) to high (right), as the heatmap uses it.
function colourRamp(map) {
  const stops = COLORMAPS[map] || COLORMAPS.inferno;
  const parts = stops.map((c, i) => `rgb(${c.join(',')}) ${(100 * i / (stops.length - 1)).toFixed(0)}%`);
  return `linear-gradient(to right, ${parts.join(', ')})`;
}

// A percentile (0–1) as a pathologist reads it: "99.8th pct".
function percentileLabel(p) {
  return `${(100 * p).toFixed(1)}th pct`;
}

// The score at the patch whose percentile is nearest `q`.
function scoreAtPercentile(q) {
  const s = state.scores;
  let best = 0;
  for (let i = 1; i < s.percentile.length; i++) {
    if (Math.abs(s.percentile[i] - q) < Math.abs(s.percentile[best] - q)) best = i;
  }
  return s.score[best];
}

// The heatmap's key: the colour ramp with the scores at its ends and middle. Colours follow the
// percentile within the slide, so the ramp is even in percentiles and the scores say what
// those are.
function drawLegend() {
  const s = state.scores;
  if (!s || s.score.length === 0) {
    $('legend').hidden = true;
    return;
  }
  // A loop, not Math.min(...): a 150,000-patch slide is past the argument limit.
  let [lo, hi] = [Infinity, -Infinity];
  for (const v of s.score) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  $('legend-ramp').style.background = colourRamp($('colormap').value);
  $('legend-min').textContent = lo.toPrecision(3);
  $('legend-median').textContent = scoreAtPercentile(0.5).toPrecision(3);
  $('legend-max').textContent = hi.toPrecision(3);
  $('legend-note').textContent =
    `${state.info.prediction.arch} attention at the 0th, 50th and 100th percentile; ` +
    `colour = the patch's percentile among this slide's ${s.score.length} patches`;
  $('legend').hidden = !$('show-heatmap').checked;
  window.gimpView.legend = { min: lo, max: hi, median: scoreAtPercentile(0.5) };
}

// Nice lengths for the scale bar, in micrometres.
function niceLength(target) {
  const base = Math.pow(10, Math.floor(Math.log10(target)));
  let best = base;
  for (const m of [1, 2, 5]) if (m * base <= target) best = m * base;
  return best;
}

// The scale bar: about 120 screen pixels of slide, as a round length in µm or mm, from the
// slide's microns per pixel and the current zoom; and the magnification on screen (the scan's
// objective power times the zoom). Hidden when the file gives no pixel size.
function updateScaleBar() {
  const item = slideItem();
  const slide = state.info && state.info.slide;
  const mpp = slide && slide.mpp;
  if (!item || !mpp || !(mpp[0] > 0)) {
    $('scale').hidden = true;
    window.gimpView.scale = null;
    return;
  }
  // Screen (CSS) pixels per level-0 pixel now.
  const zoom = item.viewportToImageZoom(viewer.viewport.getZoom(true));
  const umPerPx = mpp[0] / zoom;
  const um = niceLength(120 * umPerPx);
  const px = um / umPerPx;
  $('scale-bar').style.width = `${px.toFixed(1)}px`;
  $('scale-label').textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
  $('scale-magnification').textContent = slide.magnification
    ? `(${(slide.magnification * zoom).toPrecision(2)}× on screen)` : '';
  $('scale').hidden = false;
  window.gimpView.scale = { um, px, umPerPx };
}

function drawGrid() {
  if (!state.scores) return;
  const s = state.scores;
  const [c, scale] = slideCanvas();
  const g = c.getContext('2d');
  const side = s.patch_size_level0 * scale;
  g.strokeStyle = 'rgba(255,255,255,0.9)';
  g.lineWidth = 1;
  for (let i = 0; i < s.x.length; i++) {
    g.strokeRect(s.x[i] * scale + 0.5, s.y[i] * scale + 0.5, side - 1, side - 1);
  }
  addImageLayer('grid', c.toDataURL('image/png'));
}

function indexPatches() {
  const s = state.scores;
  const size = s.patch_size_level0;
  const buckets = new Map();
  for (let i = 0; i < s.x.length; i++) {
    const key = `${Math.floor(s.x[i] / size)},${Math.floor(s.y[i] / size)}`;
    if (!buckets.has(key)) buckets.set(key, []);
    buckets.get(key).push(i);
  }
  state.buckets = buckets;
}

// The patch under level-0 point (x, y), or -1.
function patchAt(x, y) {
  const s = state.scores;
  if (!s) return -1;
  const size = s.patch_size_level0;
  const [cx, cy] = [Math.floor(x / size), Math.floor(y / size)];
  let best = -1;
  for (let dx = -1; dx <= 0; dx++) {
    for (let dy = -1; dy <= 0; dy++) {
      for (const i of state.buckets.get(`${cx + dx},${cy + dy}`) || []) {
        if (x >= s.x[i] && x < s.x[i] + size && y >= s.y[i] && y < s.y[i] + size) {
          if (best < 0 || s.score[i] > s.score[best]) best = i;
        }
      }
    }
  }
  return best;
}

function showPatch(i) {
  const s = state.scores;
  state.selected = i;
  $('patch-panel').hidden = false;
  if (i < 0) {
    $('patch-info').textContent = 'no patch here';
    return;
  }
  $('patch-info').innerHTML =
    `row <b>${s.row[i]}</b> at (${s.x[i]}, ${s.y[i]})<br>` +
    `<b>${percentileLabel(s.percentile[i])}</b> of this slide's patches (score ${s.score[i].toPrecision(4)})`;
}

function patchUnder(position) {
  const item = slideItem();
  if (!item || !state.scores) return -1;
  const p = item.viewerElementToImageCoordinates(position);
  return patchAt(p.x, p.y);
}

new OpenSeadragon.MouseTracker({
  element: viewer.element,
  moveHandler: (e) => {
    if (state.scores) showPatch(patchUnder(e.position));
  },
});
viewer.addHandler('canvas-click', (e) => {
  if (e.quick && state.scores) showPatch(patchUnder(e.position));
});

function zoomToPatch(i) {
  const s = state.scores;
  const size = s.patch_size_level0;
  const item = slideItem();
  const rect = item.imageToViewportRectangle(s.x[i] - size, s.y[i] - size, 3 * size, 3 * size);
  viewer.viewport.fitBounds(rect, true);
  showPatch(i);
}

function renderPrediction(p) {
  const rows = p.classes.map((c, k) => {
    const v = p.probabilities[k] || 0;
    return `<div class="prob${k === p.predicted ? ' predicted' : ''}"><span>${c}</span>` +
      `<span class="bar" style="width:${Math.round(120 * v)}px"></span><span>${v.toFixed(3)}</span></div>`;
  });
  const times = p.times.map((t) => `${t.stage} ${t.seconds.toFixed(2)} s`).join(', ');
  $('prediction').innerHTML =
    `<div>Predicted: <b id="predicted-class">${p.predicted_class ?? p.predicted}</b></div>` +
    rows.join('') +
    (p.warning ? `<p class="warning">${p.warning}</p>` : '') +
    `<p class="small">${p.arch} (${p.model}); encoder ${p.encoder}, ${p.feature_width}-d; ` +
    `${p.n_patches} patches; ${times}</p>`;
}

function renderGallery(p) {
  const g = $('gallery');
  g.innerHTML = '';
  const s = state.scores;
  for (const t of p.top_patches) {
    const i = s.row.indexOf(t.row);
    const b = document.createElement('button');
    b.dataset.row = t.row;
    const pct = i >= 0 ? s.percentile[i] : null;
    b.title = `row ${t.row} at (${t.x}, ${t.y}); attention score ${t.score.toPrecision(4)}`;
    b.innerHTML = `<img alt="patch ${t.row}" src="/slides/${state.index}/patch/${t.row}.jpeg">` +
      `<div class="score">${pct === null ? t.score.toPrecision(3) : percentileLabel(pct)}</div>`;
    b.addEventListener('click', () => zoomToPatch(i));
    g.appendChild(b);
  }
  $('gallery-panel').hidden = p.top_patches.length === 0;
}

function renderList() {
  const ul = $('slides');
  ul.innerHTML = '';
  for (const s of state.slides) {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = `#slide=${s.index}`;
    a.textContent = s.id + (s.predicted_class ? ` — ${s.predicted_class}` : '') + (s.error ? ' ⚠' : '');
    if (s.error) a.classList.add('broken');
    if (s.index === state.index) a.classList.add('current');
    li.appendChild(a);
    ul.appendChild(li);
  }
}

async function openSlide(index) {
  state.generation += 1;
  state.index = index;
  state.info = null;
  state.scores = null;
  state.selected = null;
  for (const k of Object.keys(state.layers)) state.layers[k] = null;
  window.gimpView.ready = false;
  renderList();
  for (const id of ['prediction-panel', 'layers-panel', 'patch-panel', 'gallery-panel', 'error-panel', 'scale', 'legend']) {
    $(id).hidden = true;
  }
  viewer.close();
  let info;
  try {
    info = await getJson(`/api/slides/${index}`);
  } catch (e) {
    showError(String(e));
    return;
  }
  state.info = info;
  // The list learns of a damaged slide when it is first opened.
  const listed = state.slides.find((x) => x.index === index);
  if (listed && listed.error !== info.error) {
    listed.error = info.error;
    renderList();
  }
  if (info.error) {
    showError(`${info.id}: ${info.error}`);
    return;
  }
  if (info.has_scores) {
    state.scores = await getJson(`/api/slides/${index}/scores`);
    indexPatches();
  }
  const generation = state.generation;
  viewer.addOnceHandler('open', () => {
    if (generation !== state.generation) return;
    if (state.scores) {
      drawHeatmap();
      drawGrid();
      drawLegend();
    }
    updateScaleBar();
    if (info.has_tissue) addImageLayer('tissue', `/slides/${index}/tissue.png`);
    window.gimpView.ready = true;
  });
  viewer.open(`/slides/${index}/image.dzi`);
  if (info.prediction) {
    renderPrediction(info.prediction);
    $('prediction-panel').hidden = false;
    $('layers-panel').hidden = !state.scores;
    if (state.scores) renderGallery(info.prediction);
  }
}

function showError(text) {
  $('error-panel').textContent = text;
  $('error-panel').hidden = false;
  window.gimpView.ready = true;
}

$('opacity').addEventListener('input', () => {
  $('opacity-value').textContent = opacity().toFixed(2);
  if (state.layers.heatmap) state.layers.heatmap.setOpacity(layerOpacity('heatmap'));
});
$('show-heatmap').addEventListener('change', () => {
  if (state.layers.heatmap) state.layers.heatmap.setOpacity(layerOpacity('heatmap'));
  if (state.scores) $('legend').hidden = !$('show-heatmap').checked;
});
$('show-grid').addEventListener('change', () => {
  if (state.layers.grid) state.layers.grid.setOpacity(layerOpacity('grid'));
});
$('show-tissue').addEventListener('change', () => {
  if (state.layers.tissue) state.layers.tissue.setOpacity(layerOpacity('tissue'));
});
$('colormap').addEventListener('change', () => {
  drawHeatmap();
  drawLegend();
});
for (const ev of ['animation', 'animation-finish', 'resize', 'zoom']) viewer.addHandler(ev, updateScaleBar);

function indexFromHash() {
  const m = /slide=(\d+)/.exec(location.hash);
  return m ? parseInt(m[1], 10) : 0;
}
window.addEventListener('hashchange', () => openSlide(indexFromHash()));

window.gimpView = {
  state,
  viewer,
  ready: false,
  // Viewer-element pixel of level-0 point (x, y).
  imageToElement(x, y) {
    const p = slideItem().imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
    return { x: p.x, y: p.y };
  },
  // Every visible image (slide and shown layers) has all the tiles it needs at this zoom
  // (OpenSeadragon loads nothing for a hidden one).
  fullyLoaded() {
    const n = viewer.world.getItemCount();
    for (let i = 0; i < n; i++) {
      const item = viewer.world.getItemAt(i);
      if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
    }
    return n > 0;
  },
  // RGB of the drawn canvas at viewer-element pixel (x, y).
  pixel(x, y) {
    const c = viewer.drawer.canvas;
    const d = OpenSeadragon.pixelDensity || 1;
    return Array.from(c.getContext('2d').getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data.slice(0, 3));
  },
  layerOpacity(name) {
    return state.layers[name] ? state.layers[name].getOpacity() : null;
  },
  patchAt,
  // Set by updateScaleBar and drawLegend: what the scale bar and the legend show.
  scale: null,
  legend: null,
};

(async () => {
  try {
    state.slides = await getJson('/api/slides');
  } catch (e) {
    showError(String(e));
    return;
  }
  await openSlide(indexFromHash());
})();
