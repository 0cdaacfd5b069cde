"""The dashboard's static files: CSS, the shared JS (bar charts, number formats), the index's and the latent
page's JS, and the two HTML shells. Plain ES5-level JS, no library, no network: everything works opened as
file:// (data comes from <script> files that set globals; file:// fetch() is blocked in Chromium)."""

STYLE = r"""
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 16px 40px; color: #1d1d1f; background: #fff; }
h1 { font-size: 20px; margin: 16px 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: #555; margin: 0 0 10px; } .muted { color: #888; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; text-align: left; vertical-align: top; }
#latents { width: 100%; } #latents th { cursor: pointer; user-select: none; background: #f3f3f3;
  position: sticky; top: 0; } #latents tr:nth-child(even) td { background: #fafafa; }
#latents th.sorted-asc::after { content: " \25B2"; } #latents th.sorted-desc::after { content: " \25BC"; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#search { width: 420px; padding: 5px 8px; font-size: 14px; margin: 8px 8px 8px 0; }
.ctx { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 13px; white-space: pre-wrap;
       word-break: break-word; border-bottom: 1px solid #eee; padding: 5px 0; line-height: 1.7; }
.ctx .lab { display: inline-block; min-width: 150px; color: #666; font-family: system-ui, sans-serif; font-size: 12px; }
.tok { border-radius: 2px; } .tok.max { outline: 1.5px solid #c0392b; }
.tok.sample { outline: 1.5px dashed #1f6feb; } .tok.absent { color: #bbb; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; } .cols > div { min-width: 230px; }
.stats td:first-child { color: #555; } .expl { font-family: ui-monospace, Menlo, monospace; background: #f6f8fa;
  padding: 6px 8px; border-radius: 4px; display: inline-block; max-width: 100%; white-space: pre-wrap; }
.nav { margin: 12px 0 0; } .nav a { margin-right: 14px; }
svg .bar { fill: #e67e22; } svg .bar:hover { fill: #c0392b; } svg text { font: 11px system-ui, sans-serif; fill: #444; }
svg .axis { stroke: #999; stroke-width: 1; }
.pos { color: #1a7f37; } .neg { color: #cf222e; }
.kind { display: inline-block; font: 10px/1.5 sans-serif; padding: 0 4px; margin-right: 6px; border-radius: 3px;
  vertical-align: 1px; } .kind-n2g { background: #d4edda; color: #155724; } .kind-ngram { background: #e2e3f3; color: #383d7c; }
.kind-none { background: #eee; color: #888; }
td.expl-cell { min-width: 380px; max-width: 560px; font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
"""

COMMON_JS = r"""
var SAE = {};
SAE.fmt = function (v, digits) {  // a number for reading (the exact value is in title attributes)
  if (v === null || v === undefined || v !== v) return "\u2013";
  if (v === 0) return "0";
  var a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(digits || 2);
  return v.toPrecision(digits || 3);
};
SAE.el = function (tag, attrs, text) {
  var e = document.createElement(tag);
  for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
};
SAE.tokenText = function (id) {
  if (id < 0) return "\u00b7";
  var s = SAESCALE_VOCAB[id];
  return s === undefined ? "<" + id + ">" : s.replace(/\n/g, "\u23ce\n");
};
// A bar chart as inline SVG: bars[j] = {height, label (tooltip)}; xlabels: [[fraction 0..1, text], ...].
SAE.barChart = function (bars, opts) {
  var W = opts.width || 640, H = opts.height || 140, pad = 28, ns = "http://www.w3.org/2000/svg";
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + pad); svg.setAttribute("class", "chart");
  var max = 0; bars.forEach(function (b) { max = Math.max(max, b.height); });
  var bw = (W - 2 * pad) / Math.max(bars.length, 1);
  bars.forEach(function (b, j) {
    var h = max ? (opts.log ? Math.log(1 + b.height) / Math.log(1 + max) : b.height / max) * (H - 10) : 0;
    var r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + j * bw); r.setAttribute("y", H - h); r.setAttribute("width", Math.max(bw - 1, 1));
    r.setAttribute("height", Math.max(h, b.height > 0 ? 1 : 0)); r.setAttribute("class", "bar");
    var t = document.createElementNS(ns, "title"); t.textContent = b.label; r.appendChild(t);
    svg.appendChild(r);
  });
  var ax = document.createElementNS(ns, "line");
  ax.setAttribute("x1", pad); ax.setAttribute("x2", W - pad); ax.setAttribute("y1", H); ax.setAttribute("y2", H);
  ax.setAttribute("class", "axis"); svg.appendChild(ax);
  (opts.xlabels || []).forEach(function (l) {
    var t = document.createElementNS(ns, "text");
    t.setAttribute("x", pad + l[0] * (W - 2 * pad)); t.setAttribute("y", H + 15); t.setAttribute("text-anchor", "middle");
    t.textContent = l[1]; svg.appendChild(t);
  });
  if (opts.title) {
    var tt = document.createElementNS(ns, "text"); tt.setAttribute("x", pad); tt.setAttribute("y", 11);
    tt.textContent = opts.title; svg.appendChild(tt);
  }
  return svg;
};
"""

INDEX_JS = r"""
(function () {
  var D = SAESCALE_INDEX, F = D.fields, rows = D.rows, col = {};
  F.forEach(function (f, j) { col[f] = j; });
  var head = document.getElementById("meta");
  head.textContent = D.meta.model + " \u00b7 hook " + D.meta.hook + " \u00b7 " + D.meta.arch + " n=" + D.meta.n +
    " k=" + D.meta.k + " \u00b7 cache " + D.meta.split + " split, " + D.meta.n_tokens.toLocaleString() + " tokens \u00b7 " +
    rows.length + " latents on pages \u00b7 explained: N2G " + D.meta.explained + ", n-gram " +
    rows.filter(function (r) { return r[col.explanation_kind] === "ngram"; }).length;
  // density histogram
  var h = D.density_histogram, bars = [], e = h.log10_edges;
  for (var j = 0; j < h.counts.length; j++)
    bars.push({height: h.counts[j], label: "density 10^" + e[j].toFixed(2) + " .. 10^" + e[j + 1].toFixed(2) + ": " +
      h.counts[j] + " latents"});
  var xl = [];
  if (e.length) for (var p = Math.ceil(e[0]); p <= Math.floor(e[e.length - 1]); p++)
    xl.push([(p - e[0]) / (e[e.length - 1] - e[0]), "1e" + p]);
  var chart = SAE.barChart(bars, {width: 700, height: 120, xlabels: xl,
    title: "latent density (log10, " + (D.meta.n - h.never_fire) + " latents; " + h.never_fire + " never fire on this split)"});
  document.getElementById("density").appendChild(chart);

  var shown = [], sortKey = col.latent, sortDir = 1;
  var tbody = document.querySelector("#latents tbody"), count = document.getElementById("count");
  var search = document.getElementById("search");
  function text(r) { return (r[col.explanation] + " " + r[col.ngram] + " " + r[col.top_token] + " " + r[col.promoted].join(" ")).toLowerCase(); }
  var texts = rows.map(text);
  function render() {
    var q = search.value.toLowerCase().trim();
    shown = [];
    for (var i = 0; i < rows.length; i++) if (!q || texts[i].indexOf(q) >= 0) shown.push(rows[i]);
    shown.sort(function (a, b) {
      var x = a[sortKey], y = b[sortKey];
      if (x === null || x === "") return 1; if (y === null || y === "") return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    var frag = document.createDocumentFragment();
    shown.forEach(function (r) {
      var tr = document.createElement("tr"), id = r[col.latent];
      var td = SAE.el("td", {"class": "num"}); var a = SAE.el("a", {href: "latent.html#" + id}, String(id));
      td.appendChild(a); tr.appendChild(td);
      [["density", 3], ["max", 3], ["fires", 0], ["mean", 3]].forEach(function (c) {
        var v = r[col[c[0]]];
        tr.appendChild(SAE.el("td", {"class": "num", title: String(v)}, c[1] ? SAE.fmt(v, c[1]) : String(v)));
      });
      var ex = r[col.explanation] || "";  // long explanations are cut on the index; the tooltip and the page hold all
      var kind = r[col.explanation_kind], cell = SAE.el("td", {"class": "expl-cell", title: ex + (r[col.ngram] ? "\nn-gram: " + r[col.ngram] : "")});
      cell.appendChild(SAE.el("span", {"class": "kind kind-" + kind}, kind === "n2g" ? "N2G" : kind === "ngram" ? "n-gram" : "none"));
      cell.appendChild(SAE.el("span", {"class": "expl-text"}, ex.length > 150 ? ex.slice(0, 150) + " \u2026" : ex));
      tr.appendChild(cell);
      ["precision", "recall"].forEach(function (c) {
        var v = r[col[c]]; tr.appendChild(SAE.el("td", {"class": "num", title: String(v)}, SAE.fmt(v, 2)));
      });
      tr.appendChild(SAE.el("td", {}, JSON.stringify(r[col.top_token])));
      tr.appendChild(SAE.el("td", {}, r[col.promoted].map(function (s) { return JSON.stringify(s); }).join(" ")));
      frag.appendChild(tr);
    });
    tbody.innerHTML = ""; tbody.appendChild(frag);
    count.textContent = shown.length + " of " + rows.length + " latents";
    document.querySelectorAll("#latents th").forEach(function (th) {
      th.className = (th.getAttribute("data-key") === F[sortKey] ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "") +
        (th.classList.contains("num") ? " num" : "");
    });
  }
  document.querySelectorAll("#latents th").forEach(function (th) {
    th.addEventListener("click", function () {
      var k = col[th.getAttribute("data-key")];
      if (k === sortKey) sortDir = -sortDir; else { sortKey = k; sortDir = th.classList.contains("num") && k !== col.latent ? -1 : 1; }
      render();
    });
  });
  search.addEventListener("input", render);
  render();
})();
"""

LATENT_JS = r"""
(function () {
  var M = SAESCALE_META, current = null;
  function section(root, title) { root.appendChild(SAE.el("h2", {}, title)); var d = SAE.el("div"); root.appendChild(d); return d; }
  function context(L, c, label, mark) {
    var div = SAE.el("div", {"class": "ctx"});
    div.appendChild(SAE.el("span", {"class": "lab"}, label));
    for (var j = 0; j < c.tokens.length; j++) {
      var v = c.acts[j], id = c.tokens[j], a = L.max > 0 ? Math.min(v / L.max, 1) : 0;
      var s = SAE.el("span", {"class": "tok" + (j === c.argmax ? " max" : "") + (mark === j ? " sample" : "") + (id < 0 ? " absent" : ""),
        "data-z": String(v), "data-pos": String(L.first_position + j), "data-token": String(id),
        title: JSON.stringify(id < 0 ? "" : SAESCALE_VOCAB[id]) + " (token " + id + ", position " + (L.first_position + j) + "): z = " + v},
        SAE.tokenText(id));
      if (v > 0) s.style.background = "rgba(230, 126, 34, " + (0.12 + 0.88 * a).toFixed(3) + ")";
      div.appendChild(s);
    }
    return div;
  }
  function tokenTable(list, cls) {
    var t = SAE.el("table");
    list.forEach(function (x) {
      var tr = SAE.el("tr"); tr.appendChild(SAE.el("td", {}, JSON.stringify(x.text)));
      tr.appendChild(SAE.el("td", {"class": "num " + cls, title: String(x.value)}, SAE.fmt(x.value, 3))); t.appendChild(tr);
    });
    return t;
  }
  function render(L) {
    var root = document.getElementById("latent"); root.innerHTML = "";
    document.title = "latent " + L.latent + " \u00b7 " + M.title;
    var nav = SAE.el("div", {"class": "nav"});
    nav.appendChild(SAE.el("a", {href: "index.html"}, "\u2190 all latents"));
    var k = M.latents.indexOf(L.latent);
    if (k > 0) nav.appendChild(SAE.el("a", {href: "#" + M.latents[k - 1]}, "\u2039 latent " + M.latents[k - 1]));
    if (k >= 0 && k + 1 < M.latents.length) nav.appendChild(SAE.el("a", {href: "#" + M.latents[k + 1]}, "latent " + M.latents[k + 1] + " \u203a"));
    nav.appendChild(SAE.el("a", {href: "latents/" + L.latent + ".json"}, "JSON"));
    root.appendChild(nav);
    root.appendChild(SAE.el("h1", {}, "Latent " + L.latent));
    root.appendChild(SAE.el("p", {"class": "meta"}, M.subtitle));
    var cols = SAE.el("div", {"class": "cols"}); root.appendChild(cols);
    var st = SAE.el("div"); cols.appendChild(st);
    st.appendChild(SAE.el("h2", {}, "Statistics"));
    var t = SAE.el("table", {"class": "stats"});
    [["density", L.density, L.fires + " of " + L.n_tokens + " tokens"], ["max activation", L.max, ""], ["mean when firing", L.mean, ""]]
      .forEach(function (r) {
        var tr = SAE.el("tr"); tr.appendChild(SAE.el("td", {}, r[0]));
        tr.appendChild(SAE.el("td", {"class": "num", title: String(r[1])}, SAE.fmt(r[1], 4)));
        tr.appendChild(SAE.el("td", {"class": "muted"}, r[2])); t.appendChild(tr);
      });
    st.appendChild(t);
    var ex = SAE.el("div"); cols.appendChild(ex);
    var kind = L.explanation_kind || (L.explanation ? "n2g" : "none");
    var eh = SAE.el("h2", {}, "Explanation "); eh.appendChild(SAE.el("span", {"class": "kind kind-" + kind, id: "explanation-kind"},
      kind === "n2g" ? "N2G" : kind === "ngram" ? "n-gram" : "none")); ex.appendChild(eh);
    function scores(e, held) {
      return "precision " + SAE.fmt(e.precision, 3) + " (" + e.predicted + " predicted) \u00b7 recall " + SAE.fmt(e.recall, 3) +
        " (" + e.firing + " firing)" + (held ? " on the " + e.held_out_contexts + " contexts outside its top " + e.building_contexts : "");
    }
    var NG = "model-free: the activating token (and the tokens before it that its top contexts share), tested on held-out contexts";
    if (L.explanation) {
      ex.appendChild(SAE.el("div", {"class": "expl", id: "explanation"}, L.explanation.text));
      ex.appendChild(SAE.el("p", {}, scores(L.explanation, kind === "ngram")));
      if (kind === "ngram") ex.appendChild(SAE.el("p", {"class": "muted"}, NG + " (N2G: see --n2g-latents)"));
      if (kind === "n2g" && L.ngram) {
        ex.appendChild(SAE.el("p", {"class": "muted"}, "n-gram explanation (" + NG + "):"));
        ex.appendChild(SAE.el("div", {"class": "expl", id: "ngram"}, L.ngram.text));
        ex.appendChild(SAE.el("p", {}, scores(L.ngram, true)));
      }
    } else ex.appendChild(SAE.el("p", {"class": "muted", id: "explanation"}, L.explanation_reason || (L.fires ? "not explained in this build" : "never fires on this split")));
    var hs = SAE.el("div"); cols.appendChild(hs); hs.appendChild(SAE.el("h2", {}, "Activation histogram"));
    var h = L.histogram, bars = [];
    for (var j = 0; j < h.counts.length; j++)
      bars.push({height: h.counts[j], label: "z in [" + SAE.fmt(h.edges[j], 4) + ", " + SAE.fmt(h.edges[j + 1], 4) + "): " + h.counts[j] + " tokens"});
    var xl = []; if (h.edges.length) { var n = h.counts.length; [0, Math.floor(n / 2), n].forEach(function (j) { xl.push([j / n, SAE.fmt(h.edges[j], 2)]); }); }
    hs.appendChild(SAE.barChart(bars, {width: 420, height: 110, xlabels: xl, title: "firing tokens by z (log2 bins, log x)"}));

    var lg = SAE.el("div", {"class": "cols"}); root.appendChild(lg);
    var p = SAE.el("div"); p.appendChild(SAE.el("h2", {}, "Promoted tokens")); p.appendChild(tokenTable(L.logits.promoted, "pos")); lg.appendChild(p);
    var q = SAE.el("div"); q.appendChild(SAE.el("h2", {}, "Suppressed tokens")); q.appendChild(tokenTable(L.logits.suppressed, "neg")); lg.appendChild(q);
    var nb = SAE.el("div"); nb.appendChild(SAE.el("h2", {}, "Nearest latents (decoder cosine)")); lg.appendChild(nb);
    var nt = SAE.el("table", {id: "neighbours"});
    L.neighbours.forEach(function (x) {
      var tr = SAE.el("tr"), td = SAE.el("td");
      if (M.latents.indexOf(x.latent) >= 0) td.appendChild(SAE.el("a", {href: "#" + x.latent}, "latent " + x.latent));
      else td.textContent = "latent " + x.latent;
      tr.appendChild(td); tr.appendChild(SAE.el("td", {"class": "num", title: String(x.cosine)}, SAE.fmt(x.cosine, 3)));
      var e = M.explanations[x.latent]; tr.appendChild(SAE.el("td", {"class": "muted"}, e || "")); nt.appendChild(tr);
    });
    nb.appendChild(nt);
    lg.appendChild(SAE.el("p", {"class": "muted"}, "logit lens: W_U \u00b7 (final norm weight \u2299 W_dec[i]), " + L.logits.final_norm));

    var top = section(root, "Top activating contexts (" + L.top.length + ")"); top.id = "top";
    L.top.forEach(function (c, j) { top.appendChild(context(L, c, "#" + (j + 1) + "  max " + SAE.fmt(c.max, 3), -1)); });
    var qs = section(root, "Contexts sampled from activation quantiles"); qs.id = "quantiles";
    L.quantiles.forEach(function (c) {
      qs.appendChild(context(L, c, "q " + c.quantile[0].toFixed(2) + "\u2013" + c.quantile[1].toFixed(2) + "  z " + SAE.fmt(c.value, 3), c.pos));
    });
    if (!L.top.length) top.appendChild(SAE.el("p", {"class": "muted"}, "never fires on this split"));
  }
  function load() {
    var id = parseInt((location.hash || "").slice(1), 10);
    if (isNaN(id)) id = M.latents[0];
    if (current) current.remove();
    window.SAESCALE_LATENT = null;
    current = document.createElement("script");
    current.src = "latents/" + id + ".js";
    current.onload = function () { render(window.SAESCALE_LATENT); window.scrollTo(0, 0); document.body.setAttribute("data-loaded", String(id)); };
    current.onerror = function () {
      document.getElementById("latent").innerHTML = "";
      document.getElementById("latent").appendChild(SAE.el("p", {}, "latent " + id + " has no page in this dashboard (built with --latents)"));
      document.body.setAttribute("data-loaded", "missing");
    };
    document.body.appendChild(current);
  }
  window.addEventListener("hashchange", load);
  load();
})();
"""

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="assets/style.css"></head>
<body>
<h1>{title}</h1>
<p class="meta" id="meta"></p>
<div id="density"></div>
<div><input id="search" type="search" placeholder="search explanations and tokens" autocomplete="off">
<span id="count" class="muted"></span></div>
<table id="latents"><thead><tr>
<th class="num" data-key="latent">latent</th><th class="num" data-key="density">density</th>
<th class="num" data-key="max">max</th><th class="num" data-key="fires">fires</th><th class="num" data-key="mean">mean</th>
<th data-key="explanation">explanation (N2G / n-gram)</th><th class="num" data-key="precision">precision</th>
<th class="num" data-key="recall">recall</th><th data-key="top_token">top token</th><th data-key="promoted">promotes</th>
</tr></thead><tbody></tbody></table>
<script src="data/index.js"></script>
<script src="assets/common.js"></script>
<script src="assets/index.js"></script>
</body></html>
"""

LATENT_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="assets/style.css"></head>
<body>
<div id="latent"><p class="muted">loading...</p></div>
<script src="data/vocab.js"></script>
<script src="data/meta.js"></script>
<script src="assets/common.js"></script>
<script src="assets/latent.js"></script>
</body></html>
"""
