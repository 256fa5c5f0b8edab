"""The status page's one HTML file: styles, and a script written here that draws a
:func:`.page.page_view` object as tables, progress bars and inline SVG charts.

The same file serves both uses: live (``--serve``: it fetches ``status.json`` every few seconds
and redraws, without reloading) and as a report (``--html``: the view is embedded and drawn once).
It loads nothing from the network. Invariant: the script puts text from the view into the page
only as text nodes and attribute values (``textContent``, ``setAttribute``), never as markup, and
the embedded JSON has every ``<`` escaped, so nothing from the root can become HTML.
"""

from __future__ import annotations

import html
import re
from typing import Any

import orjson

#: Seconds between polls of the live page.
POLL_SECONDS = 3

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>slimtok status · __TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 .3em; } h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .15em .6em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text { text-align: left; }
td.text { white-space: normal; max-width: 60em; }
tr.warn td { background: #fff4d6; } tr.bad td { background: #fde2e2; }
p.warn { color: #8a5a00; } p.bad, #error { color: #b00020; font-weight: bold; }
.bar { display: inline-block; width: 10em; height: .8em; background: #eee; vertical-align: middle; }
.bar > span { display: block; height: 100%; background: #3a7bd5; }
.big.bar { width: 30em; height: 1.1em; }
svg { background: #fafafa; border: 1px solid #ddd; margin-right: 1em; }
.note, .muted { color: #666; }
</style></head>
<body>
<h1>slimtok status: <span id="root"></span></h1>
<div class="muted">as of <span id="at"></span> <span id="live"></span></div>
<div id="main"></div>
<script type="application/json" id="view">__VIEW__</script>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
const COLOURS = ["#222", "#3a7bd5", "#d5803a", "#2e9d5b", "#a43ad5", "#d53a6a", "#3ab7d5", "#8a8a2e"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}
function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}
function bar(fraction, cls) {
  const outer = el("span", {"class": "bar" + (cls ? " " + cls : ""), "data-fraction": fraction});
  outer.appendChild(el("span", {"style": "width:" + (100 * Math.min(Math.max(fraction, 0), 1)).toFixed(1) + "%"}));
  return outer;
}

function lineChart(spec) {
  const W = 640, H = 220, L = 8, T = 22, B = 200;
  const svg = svgEl("svg", {"width": W, "height": H, "viewBox": "0 0 " + W + " " + H, "data-chart": spec.id});
  svg.appendChild(svgEl("text", {"x": L, "y": 14, "font-size": 12}, spec.title + " · max " + spec.max_label));
  svg.appendChild(svgEl("line", {"x1": L, "y1": B, "x2": W - L, "y2": B, "stroke": "#999"}));
  svg.appendChild(svgEl("text", {"x": L, "y": H - 4, "font-size": 11}, spec.x_labels[0]));
  svg.appendChild(svgEl("text", {"x": W - L, "y": H - 4, "font-size": 11, "text-anchor": "end"}, spec.x_labels[1]));
  const top = spec.max > 0 ? spec.max : 1;
  spec.series.forEach((s, i) => {
    const n = s.values.length, dx = (W - 2 * L) / Math.max(n, 1);
    // a step per bin (its start and end at its rate): a one-bin history still draws a line
    const pts = s.values.flatMap((v, j) => [j, j + 1].map(
      (x) => (L + dx * x).toFixed(1) + "," + (B - (B - T) * v / top).toFixed(1)));
    const colour = COLOURS[i % COLOURS.length];
    svg.appendChild(svgEl("polyline", {"points": pts.join(" "), "fill": "none", "stroke": colour,
      "stroke-width": i === 0 ? 2.5 : 1.5, "data-series": s.name}));
    svg.appendChild(svgEl("text", {"x": W - L, "y": T + 12 * (i + 1), "font-size": 11, "fill": colour,
      "text-anchor": "end"}, s.name));
  });
  return svg;
}

function barChart(spec) {
  const W = 640, rowH = 16, L = 160, T = 22;
  const H = T + spec.bars.length * (rowH * spec.legend.length + 8) + 6;
  const svg = svgEl("svg", {"width": W, "height": H, "viewBox": "0 0 " + W + " " + H, "data-chart": spec.id});
  svg.appendChild(svgEl("text", {"x": 8, "y": 14, "font-size": 12}, spec.title + " · max " + spec.max_label));
  const top = spec.max > 0 ? spec.max : 1;
  let y = T;
  spec.bars.forEach((b) => {
    svg.appendChild(svgEl("text", {"x": 8, "y": y + rowH - 4, "font-size": 11}, b.name));
    b.values.forEach((v, k) => {
      const w = (W - L - 90) * v / top;
      svg.appendChild(svgEl("rect", {"x": L, "y": y, "width": w.toFixed(1), "height": rowH - 3,
        "fill": COLOURS[k + 1], "data-series": b.name + ":" + spec.legend[k]}));
      svg.appendChild(svgEl("text", {"x": L + w + 4, "y": y + rowH - 5, "font-size": 11},
        spec.legend[k] + " " + b.labels[k]));
      y += rowH;
    });
    y += 8;
  });
  return svg;
}

function table(t) {
  const box = el("section", {"id": "table-" + t.id});
  box.appendChild(el("h2", {}, t.title));
  if (t.rows.length === 0) { box.appendChild(el("p", {"class": "muted"}, "none")); }
  else {
    const tab = el("table", {"data-table": t.id});
    const head = el("tr");
    for (const c of t.columns) head.appendChild(el("th", {}, c));
    if (t.rows.some((r) => r.bar !== null)) head.appendChild(el("th", {}, ""));
    tab.appendChild(head);
    for (const r of t.rows) {
      const tr = el("tr", {"data-row": r.key, "class": r.level});
      r.cells.forEach((c, i) => {
        tr.appendChild(el("td", {"data-col": t.columns[i], "class": /^[\\d,.%\\s—-]+$/.test(c) ? "" : "text"}, c));
      });
      if (r.bar !== null) { const td = el("td"); td.appendChild(bar(r.bar)); tr.appendChild(td); }
      tab.appendChild(tr);
    }
    box.appendChild(tab);
  }
  if (t.note) box.appendChild(el("p", {"class": "note", "data-note": t.id}, t.note));
  return box;
}

function render(v) {
  document.getElementById("root").textContent = v.root;
  document.getElementById("at").textContent = v.at;
  const main = el("div", {"id": "main"});
  if (v.error) {
    main.appendChild(el("p", {"id": "error"}, v.error));
  } else {
    const overall = el("div", {"id": "overall"});
    overall.appendChild(bar(v.progress, "big"));
    overall.appendChild(el("span", {}, " " + (100 * v.progress).toFixed(1) + "% of shards done"));
    main.appendChild(overall);
    for (const line of v.lines) {
      main.appendChild(el("p", {"id": "line-" + line.id, "class": line.level || ""}, line.text));
    }
    const charts = el("div", {"id": "charts"});
    for (const c of v.charts) charts.appendChild(c.kind === "bars" ? barChart(c) : lineChart(c));
    main.appendChild(charts);
    for (const t of v.tables) main.appendChild(table(t));
  }
  document.getElementById("main").replaceWith(main);
  document.body.setAttribute("data-rendered", v.at);
}

function poll() {
  fetch("status.json", {"cache": "no-store"})
    .then((r) => r.json())
    .then((v) => { render(v); document.getElementById("live").textContent = "· live, every " + POLL_MS / 1000 + " s"; })
    .catch((e) => { document.getElementById("live").textContent = "· cannot reach the server (" + e + "); retrying"; })
    .finally(() => setTimeout(poll, POLL_MS));
}

const embedded = JSON.parse(document.getElementById("view").textContent);
if (embedded) render(embedded); else poll();
</script>
</body></html>
"""


def render_page(view: dict[str, Any] | None, title: str) -> str:
    """The page titled ``title``: with ``view`` a self-contained report of it; without, the live
    page that polls ``status.json`` beside it."""
    values = {
        # "<" escaped as \\u003c: the JSON cannot close the script element or open a comment
        "VIEW": orjson.dumps(view).decode().replace("<", "\\u003c"),
        "POLL_MS": str(POLL_SECONDS * 1000),
        "TITLE": html.escape(title),
    }
    # one pass, so a marker inside a substituted value is never substituted again
    return re.sub(r"__(VIEW|POLL_MS|TITLE)__", lambda m: values[m.group(1)], PAGE)
