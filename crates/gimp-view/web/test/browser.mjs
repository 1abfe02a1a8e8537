// The viewer in a real browser (headless Chromium from Debian's `chromium` package, driven by
// playwright-core): `gimp-rs predict` on the repository's slide, `gimp-rs view` on the result,
// then the page: tiles load, the heatmap is brightest over the highest-scoring patches, the
// opacity slider changes the overlay, the scale bar matches the slide's microns per pixel at every
// zoom, the legend gives the score range, the gallery shows percentiles, a gallery patch zooms
// there; Ctrl-C (SIGINT) stops the server with exit code 0. Run by browser-test.sh.
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../../..');
const gimp = process.env.GIMP_RS || join(repo, 'target/release/gimp-rs');
const outDir = process.env.BROWSER_TEST_OUT || mkdtempSync(join(tmpdir(), 'gimp-view-browser-'));
mkdirSync(outDir, { recursive: true });

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

// 1. A prediction on the repository's slide (fixture weights: random, narrow, fast).
const pred = join(outDir, 'pred');
execFileSync(gimp, [
  'predict',
  '--arch', 'clam_sb',
  '--weights', join(repo, 'crates/gimp-models/tests/fixtures/clam_sb_weights.safetensors'),
  '--slide', join(repo, 'data/slides/cmu_small_region.svs'),
  '--encoder-weights', join(repo, 'crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors'),
  '--preset', 'bwh_biopsy',
  '--out', pred,
], { stdio: ['ignore', 'ignore', 'inherit'] });

// A damaged slide beside it: the first third of the file.
const broken = join(outDir, 'broken');
mkdirSync(broken, { recursive: true });
const svs = readFileSync(join(repo, 'data/slides/cmu_small_region.svs'));
writeFileSync(join(broken, 'damaged.svs'), svs.subarray(0, Math.floor(svs.length / 3)));

// 2. The viewer on a free port; its first stdout line is the address.
const server = spawn(gimp, ['view', pred, join(repo, 'data/slides'), broken, '--port', '0'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const address = await new Promise((ok, fail) => {
  let text = '';
  server.stdout.on('data', (d) => {
    text += d;
    const m = /listening on (http:\/\/\S+)/.exec(text);
    if (m) ok(m[1]);
  });
  server.on('exit', (code) => fail(new Error(`gimp-rs view exited with ${code}`)));
  setTimeout(() => fail(new Error('gimp-rs view did not start in 20 s')), 20000);
});

process.on('exit', () => server.kill());
const profile = mkdtempSync(join(tmpdir(), 'gimp-view-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1200, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let failed = false;
let page;
try {
  page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const list = await (await fetch(`${address}api/slides`)).json();
  const good = list.find((s) => s.id === 'cmu_small_region').index;
  const bad = list.find((s) => s.id === 'damaged').index;
  await page.goto(`${address}#slide=${good}`);
  await page.waitForFunction(() => window.gimpView && window.gimpView.ready, null, { timeout: 20000 });
  const slides = await page.$$eval('#slides li', (l) => l.map((e) => e.textContent));
  check(slides.length === 2 && slides.some((t) => t.startsWith('cmu_small_region')), `two slides listed (${slides})`);
  check(await page.isHidden('#error-panel'), 'no error panel on the good slide');
  check((await page.textContent('#predicted-class')).length > 0, 'the prediction is shown');

  // The heatmap alone, fully opaque, bright = high; then wait until every tile is drawn.
  await page.uncheck('#show-grid');
  await page.uncheck('#show-tissue');
  await page.locator('#opacity').fill('1');
  await page.waitForFunction(() => window.gimpView.layerOpacity('heatmap') === 1, null, { timeout: 20000 });
  await page.waitForFunction(() => window.gimpView.fullyLoaded(), null, { timeout: 20000 });
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(outDir, 'viewer.png') });

  // Brightness of the drawn canvas at each patch centre, against the patch's score.
  const bright = () => page.evaluate(() => {
    const g = window.gimpView;
    const s = g.state.scores;
    const half = s.patch_size_level0 / 2;
    return s.x.map((x, i) => {
      const p = g.imageToElement(x + half, s.y[i] + half);
      const [r, gr, b] = g.pixel(p.x, p.y);
      return { pct: s.percentile[i], lum: 0.2126 * r + 0.7152 * gr + 0.0722 * b };
    });
  });
  const full = await bright();
  const byScore = [...full].sort((a, b) => b.pct - a.pct);
  const k = Math.max(1, Math.floor(full.length / 5));
  const mean = (a) => a.reduce((t, v) => t + v.lum, 0) / a.length;
  const [top, bottom] = [mean(byScore.slice(0, k)), mean(byScore.slice(-k))];
  check(top > bottom + 60, `overlay brightest over the top-scoring fifth (${top.toFixed(0)} vs ${bottom.toFixed(0)})`);
  const brightest = [...full].sort((a, b) => b.lum - a.lum)[0];
  check(brightest.pct >= byScore[k - 1].pct, `the brightest patch is in the top fifth (percentile ${brightest.pct.toFixed(2)})`);

  // The legend: the colour map's ramp with the lowest, median and highest score.
  check(await page.isVisible('#legend'), 'the heatmap legend is shown');
  const legend = await page.evaluate(() => {
    const s = window.gimpView.state.scores;
    return {
      lo: Math.min(...s.score).toPrecision(3), hi: Math.max(...s.score).toPrecision(3),
      shownLo: document.getElementById('legend-min').textContent,
      shownHi: document.getElementById('legend-max').textContent,
      ramp: document.getElementById('legend-ramp').style.background,
    };
  });
  check(legend.shownLo === legend.lo && legend.shownHi === legend.hi,
    `the legend gives the score range (${legend.shownLo} to ${legend.shownHi}; scores ${legend.lo} to ${legend.hi})`);
  check(legend.ramp.includes('gradient'), 'the legend shows the colour ramp');
  await page.uncheck('#show-heatmap');
  check(await page.isHidden('#legend'), 'the legend hides with the heatmap');
  await page.check('#show-heatmap');
  check(await page.isVisible('#legend'), 'and comes back with it');

  // The scale bar: a round length whose drawn width is that length at the slide's microns per
  // pixel and the current zoom; it follows the zoom.
  const scaleBar = async (what) => {
    const r = await page.evaluate(() => {
      const g = window.gimpView;
      const item = g.viewer.world.getItemAt(0);
      return {
        label: document.getElementById('scale-label').textContent,
        bar: document.getElementById('scale-bar').getBoundingClientRect().width,
        mpp: g.state.info.slide.mpp[0],
        zoom: item.viewportToImageZoom(g.viewer.viewport.getZoom(true)),
      };
    });
    const m = /^([\d.]+) (µm|mm)$/.exec(r.label);
    const um = m ? parseFloat(m[1]) * (m[2] === 'mm' ? 1000 : 1) : NaN;
    const want = (um / r.mpp) * r.zoom;
    check(Math.abs(r.bar - want) / want < 0.03 && r.bar > 40 && r.bar < 300,
      `${what}: the scale bar says ${r.label} and is ${r.bar.toFixed(1)} px (${want.toFixed(1)} px at ${r.mpp} µm/px)`);
    return r.label;
  };
  check(await page.isVisible('#scale'), 'a scale bar is shown');
  const wide = await scaleBar('whole slide');
  await page.evaluate(() => window.gimpView.viewer.viewport.zoomBy(8, undefined, true));
  await page.waitForTimeout(600);
  const close = await scaleBar('zoomed in 8×');
  check(close !== wide, `the scale bar follows the zoom (${wide} → ${close})`);
  await page.evaluate(() => window.gimpView.viewer.viewport.goHome(true));
  await page.waitForTimeout(600);

  // The opacity slider.
  await page.locator('#opacity').fill('0.2');
  await page.waitForFunction(() => Math.abs(window.gimpView.layerOpacity('heatmap') - 0.2) < 1e-6, null, { timeout: 5000 });
  await page.waitForTimeout(300);
  const faint = await bright();
  const change = full.reduce((t, v, i) => t + Math.abs(v.lum - faint[i].lum), 0) / full.length;
  check(change > 10, `the opacity slider changes the overlay (mean change ${change.toFixed(1)})`);
  check((await page.textContent('#opacity-value')) === '0.20', 'the slider shows its value');

  // A gallery patch: the view zooms to it and shows its score.
  const n = await page.$$eval('#gallery button', (b) => b.length);
  check(n >= 1, `${n} patches in the gallery`);
  const shown = await page.evaluate(() => {
    const s = window.gimpView.state.scores;
    return [...document.querySelectorAll('#gallery button')].map((b) => ({
      text: b.querySelector('.score').textContent,
      pct: s.percentile[s.row.indexOf(Number(b.dataset.row))],
    }));
  });
  check(shown.every((g) => g.text === `${(100 * g.pct).toFixed(1)}th pct`) && shown[0].text === '100.0th pct',
    `the gallery shows percentiles, not raw scores (${shown.map((g) => g.text).join(', ')})`);
  const row = await page.getAttribute('#gallery button >> nth=0', 'data-row');
  const zoomBefore = await page.evaluate(() => window.gimpView.viewer.viewport.getZoom(true));
  await page.click('#gallery button >> nth=0');
  await page.waitForTimeout(800);
  const where = await page.evaluate((row) => {
    const g = window.gimpView;
    const s = g.state.scores;
    const i = s.row.indexOf(Number(row));
    const item = g.viewer.world.getItemAt(0);
    const c = item.viewportToImageCoordinates(g.viewer.viewport.getCenter(true));
    return { dx: c.x - (s.x[i] + s.patch_size_level0 / 2), dy: c.y - (s.y[i] + s.patch_size_level0 / 2),
      size: s.patch_size_level0, zoom: g.viewer.viewport.getZoom(true) };
  }, row);
  check(Math.hypot(where.dx, where.dy) < where.size / 2, `a gallery click centres its patch (off by ${Math.hypot(where.dx, where.dy).toFixed(0)} px)`);
  check(where.zoom > zoomBefore, 'and zooms in');
  check((await page.textContent('#patch-info')).includes(`row ${row}`) || (await page.textContent('#patch-info')).includes(row), 'and shows its score');
  await page.screenshot({ path: join(outDir, 'viewer-zoomed.png') });

  // The damaged slide shows its error; the good one still works afterwards.
  await page.click(`#slides a[href="#slide=${bad}"]`);
  await page.waitForSelector('#error-panel', { state: 'visible', timeout: 10000 });
  const err = await page.textContent('#error-panel');
  check(err.includes('damaged.svs'), `the damaged slide shows an error panel (${err.slice(0, 80)}...)`);
  await page.screenshot({ path: join(outDir, 'viewer-error.png') });
  await page.click(`#slides a[href="#slide=${good}"]`);
  await page.waitForFunction(() => window.gimpView.ready && window.gimpView.fullyLoaded(), null, { timeout: 20000 });
  check(await page.isHidden('#error-panel'), 'and the good slide opens again');
  check(errors.length === 0, `no page errors (${errors.join('; ')})`);

  // Ctrl-C: the server stops taking requests and exits 0, with the browser still connected.
  const exited = new Promise((ok) => server.once('exit', (code, signal) => ok(`${code} ${signal}`)));
  server.kill('SIGINT');
  const how = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok('still running after 10 s'), 10000))]);
  check(how === '0 null', `Ctrl-C (SIGINT) stops the server with exit code 0 (${how})`);
  writeFileSync(join(outDir, 'result.txt'), 'ok\n');
} catch (e) {
  failed = true;
  console.error(String(e));
  if (page) {
    await page.screenshot({ path: join(outDir, 'failure.png') }).catch(() => {});
    const s = await page.evaluate(() => {
      const g = window.gimpView;
      if (!g) return 'no window.gimpView';
      const w = g.viewer.world;
      const items = [];
      for (let i = 0; i < w.getItemCount(); i++) {
        const it = w.getItemAt(i);
        items.push({ opacity: it.getOpacity(), loaded: it.getFullyLoaded() });
      }
      return JSON.stringify({ ready: g.ready, items, layers: Object.keys(g.state.layers).map((k) => [k, !!g.state.layers[k]]) });
    }).catch((err) => String(err));
    console.error(`page state: ${s}`);
  }
} finally {
  await browser.close();
  server.kill();
}
console.log(`screenshots in ${outDir}`);
process.exit(failed ? 1 : 0);
