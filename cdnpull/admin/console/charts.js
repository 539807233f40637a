// The console's charts: the last 15 minutes of GET /api/stats drawn with
// uPlot (vendored beside this file, served by the admin listener; nothing is
// loaded from anywhere else).  Every chart has the same card, title line,
// size, axes and window; one colour per measure, one colour per address.
"use strict";

const Charts = (() => {
  const WINDOW = 900;           // seconds shown: the node keeps 15 minutes
  const HEIGHT = 120;           // plot height of every chart, in CSS pixels
  const COLOURS = {requests: "#2f6fbf", hit_ratio: "#2e9e5b", origin_errors: "#d23c3c",
                   failovers: "#e08a1e", origin_latency_ms: "#7b4fc9",
                   bytes: "#2f6fbf", objects: "#2e9e5b"};
  const PALETTE = ["#2f6fbf", "#e08a1e", "#2e9e5b", "#d23c3c", "#7b4fc9", "#17a2b8",
                   "#8c564b", "#d6589f"];
  // [series, title, unit, map, counts (whole numbers per sample)]
  const DOMAIN_CHARTS = [
    ["requests", "Requests", "/s", v => v, false],
    ["hit_ratio", "Hit ratio", "%", v => v === null ? null : v * 100, false],
    ["origin_errors", "Origin errors", "", v => v, true],
    ["failovers", "Failovers", "", v => v, true],
    ["origin_latency_ms", "Origin latency", " ms", v => v, false],
  ];
  const ADDRESS_CHARTS = [
    ["requests", "Requests per address", "/s", false],
    ["errors", "Errors per address", "", true],
    ["latency_ms", "Latency per address", " ms", false],
  ];
  const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 1e5, 1e6];
  // Byte ticks: 1, 2, 5, 10, ... of B, KiB, MiB, GiB.
  const BYTE_STEPS = [0, 1, 2, 3].flatMap(
    k => [1, 2, 5, 10, 20, 50, 100, 200, 500].map(m => m * 1024 ** k));
  const sections = new Map();   // domain name -> its persistent chart section
  let node = null;              // the cache charts
  let last = null;              // the last /api/stats answer

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function fmt(v, unit, counts) {
    if (v === null || v === undefined) return "–";
    if (counts) return String(Math.round(v)) + unit;
    const a = Math.abs(v);
    const s = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2)
      : a === 0 ? "0" : v.toFixed(3);
    return s + unit;
  }

  function swatch(colour) {
    const s = el("span", {"class": "swatch"});
    s.style.background = colour;  // CSSOM, not a style attribute: fine under any CSP
    return s;
  }

  function lastValue(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit",
                                                      hour12: false});
  }

  // Axis labels: as few digits as tell the ticks apart.
  function tick(v, unit) {
    const a = Math.abs(v);
    const s = a >= 1000 ? (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k"
      : a >= 10 || a === 0 || Number.isInteger(v) ? v.toFixed(0) : a >= 1 ? v.toFixed(1)
      : String(+v.toFixed(3));
    return s + unit;
  }

  function bytes(v) {
    if (v === null || v === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }

  // One chart: a card with a title line (name, last value) and a uPlot
  // plot of one or more series over the shared 15-minute window.
  class Chart {
    constructor(key, title, unit, series, options) {
      this.unit = unit;
      this.series = series;                      // [{label, colour}]
      this.counts = !!(options && options.counts);
      this.format = (options && options.format) || (v => fmt(v, unit, this.counts));
      this.tick = (options && options.tick) || (v => tick(v, unit));
      this.range = options && options.range;
      this.steps = options && options.steps;
      this.legend = series.length > 1;
      this.value = el("span", {"class": "chart-value"});
      this.box = el("div", {"class": "chart"});
      this.root = el("div", {"class": "chart-card", "data-chart": key},
        el("div", {"class": "chart-head"}, el("span", {"class": "chart-title"}, title), this.value),
        this.box);
      this.plot = null;
      this.data = null;
      new ResizeObserver(() => this.resize()).observe(this.box);
    }

    options(width) {
      const axis = {stroke: "#666", font: "11px system-ui, sans-serif", size: 24,
                    grid: {stroke: "#eee", width: 1}, ticks: {stroke: "#ddd", width: 1, size: 3}};
      return {
        width, height: HEIGHT,
        cursor: {drag: {x: false, y: false}, points: {size: 5}},
        legend: {show: this.legend, live: false},
        scales: {
          x: {time: true, range: (u, min, max) => [max - WINDOW, max]},
          y: {range: this.range || ((u, min, max) => [0, max > 0 ? max * 1.15 : 1])},
        },
        axes: [
          // Time ticks on whole minutes (every 5 on a narrow chart).
          {...axis, space: 44, incrs: [60, 120, 300, 600, 900], values: (u, splits) => splits.map(clock)},
          {...axis, space: 26, values: (u, splits) => splits.map(v => this.tick(v)),
           size: (u, values) => values ? Math.ceil(12 + 7 * Math.max(...values.map(v => v.length))) : 30,
           ...(this.steps ? {incrs: this.steps} : this.counts ? {incrs: COUNT_STEPS} : {})},
        ],
        series: [{}, ...this.series.map(s => ({
          label: s.label, stroke: s.colour, width: 1.6, fill: s.colour + "1f",
          // Dots only while there are too few samples for a line to show.
          points: {show: (u, si) => u.data[si].filter(v => v !== null).length < 3, size: 5},
          spanGaps: false, value: (u, v) => this.format(v),
        }))],
      };
    }

    resize() {
      const width = Math.floor(this.box.clientWidth);
      if (width <= 0) return;
      if (!this.plot) {
        this.plot = new uPlot(this.options(width), this.data || this.empty(), this.box);
      } else if (Math.abs(this.plot.width - width) > 1) {
        this.plot.setSize({width, height: HEIGHT});
      }
    }

    empty() {
      return [[], ...this.series.map(() => [])];
    }

    set(times, arrays) {
      this.data = [times, ...arrays];
      const v = this.series.length === 1 ? lastValue(arrays[0]) : null;
      this.value.textContent = this.series.length === 1 ? this.format(v) : "";
      this.root.dataset.samples = String(times.length);
      if (this.plot) this.plot.setData(this.data);
      else this.resize();
    }
  }

  // Which address was blocked when: one row per address, red where a
  // sample saw it blocked, green where it was up, over the same window.
  class Timeline {
    constructor() {
      this.rows = el("div", {"class": "timeline-rows"});
      this.root = el("div", {"class": "chart-card timeline", "data-chart": "blocks"},
        el("div", {"class": "chart-head"}, el("span", {"class": "chart-title"}, "Block timeline"),
           el("span", {"class": "chart-value"}, "")),
        this.rows,
        el("div", {"class": "timeline-axis"}, ...["−15 min", "−10 min", "−5 min", "now"].map(
          t => el("span", {}, t))));
      this.state = this.root.querySelector(".chart-value");
    }

    set(times, interval, addresses) {
      const end = times.length ? times[times.length - 1] : 0;
      const x = t => Math.max(0, Math.min(WINDOW, t - (end - WINDOW)));
      const rows = [];
      let blockedNow = 0;
      addresses.forEach((a, i) => {
        const bar = svg("svg", {"viewBox": `0 0 ${WINDOW} 10`, "preserveAspectRatio": "none",
                                "class": "timeline-bar"});
        bar.append(svg("rect", {"x": 0, "y": 0, "width": WINDOW, "height": 10, "class": "none"}));
        let run = null;
        const flush = () => {
          if (!run) return;
          const r = svg("rect", {"x": x(run.from), "y": 0, "width": Math.max(1.5, x(run.to) - x(run.from)),
                                 "height": 10, "class": run.kind});
          if (run.kind === "blocked") {
            const t = svg("title");
            t.textContent = `blocked ${new Date(run.from * 1000).toLocaleTimeString()}` +
              ` – ${new Date(run.to * 1000).toLocaleTimeString()}` + (run.reason ? ` (${run.reason})` : "");
            r.append(t);
          }
          bar.append(r);
          run = null;
        };
        a.blocked.forEach((b, k) => {
          const kind = b === 1 ? "blocked" : b === 0 ? "up" : null;
          const from = times[k] - interval, to = times[k];
          if (run && run.kind === kind && Math.abs(run.to - from) < interval / 2) { run.to = to; return; }
          flush();
          if (kind) run = {kind, from, to, reason: kind === "blocked" && a.blocks.length ?
            a.blocks[a.blocks.length - 1].reason : null};
        });
        flush();
        const now = lastValue(a.blocked) === 1;
        blockedNow += now ? 1 : 0;
        rows.push(el("div", {"class": "timeline-row", "data-address": a.address},
          swatch(PALETTE[i % PALETTE.length]),
          el("span", {"class": "timeline-label"}, a.address,
             el("small", {}, a.group ? " " + a.group : " gone")),
          bar));
      });
      if (!rows.length) rows.push(el("div", {"class": "timeline-row"}, "no address"));
      this.rows.replaceChildren(...rows);
      this.state.textContent = blockedNow ? `${blockedNow} blocked now` : "all up";
      this.state.classList.toggle("alarm", blockedNow > 0);
      this.root.dataset.samples = String(times.length);
    }
  }

  // The charts of one domain; kept across the console's table refreshes.
  class DomainSection {
    constructor(name) {
      this.name = name;
      this.charts = DOMAIN_CHARTS.map(([key, title, unit, , counts]) => {
        const range = key === "hit_ratio" ? () => [0, 100] : null;
        return new Chart(key, title, unit, [{label: title, colour: COLOURS[key]}], {range, counts});
      });
      this.addressKey = "";
      this.addressCharts = [];
      this.timeline = new Timeline();
      this.addressGrid = el("div", {"class": "chart-grid"});
      this.root = el("div", {"class": "charts", "data-charts": name},
        el("div", {"class": "chart-grid"}, ...this.charts.map(c => c.root)),
        this.addressGrid);
    }

    update(stats, d) {
      DOMAIN_CHARTS.forEach(([key, , , map], i) => {
        this.charts[i].set(stats.times, [d[key].map(map)]);
      });
      const key = d.addresses.map(a => a.address).join(" ");
      if (key !== this.addressKey) {
        this.addressKey = key;
        this.addressCharts = ADDRESS_CHARTS.map(([k, title, unit, counts]) => new Chart(
          "address-" + k, title, unit,
          d.addresses.map((a, i) => ({label: a.address, colour: PALETTE[i % PALETTE.length]})),
          {counts}));
        this.addressGrid.replaceChildren(...this.addressCharts.map(c => c.root), this.timeline.root);
      }
      ADDRESS_CHARTS.forEach(([k], i) => {
        this.addressCharts[i].set(stats.times, d.addresses.map(a => a[k]));
      });
      this.timeline.set(stats.times, stats.interval, d.addresses);
    }
  }

  function section(name) {
    let s = sections.get(name);
    if (!s) {
      s = new DomainSection(name);
      sections.set(name, s);
      if (last) {
        const d = last.domains.find(x => x.name === name);
        if (d) s.update(last, d);
      }
    }
    return s.root;
  }

  function nodeCharts() {
    if (!node) {
      node = {
        bytes: new Chart("cache-bytes", "Cache size", "", [{label: "bytes", colour: COLOURS.bytes}],
                         {format: bytes, tick: bytes, steps: BYTE_STEPS}),
        objects: new Chart("cache-objects", "Cache objects", "",
                           [{label: "objects", colour: COLOURS.objects}], {counts: true}),
      };
      document.getElementById("node-charts").append(node.bytes.root, node.objects.root);
    }
    return node;
  }

  async function update(api) {
    const stats = await api("GET", "/api/stats");
    last = stats;
    const n = nodeCharts();
    n.bytes.set(stats.times, [stats.cache.bytes]);
    n.objects.set(stats.times, [stats.cache.objects]);
    for (const d of stats.domains) {
      const s = sections.get(d.name);
      if (s) s.update(stats, d);
    }
    for (const name of [...sections.keys()]) {
      if (!stats.domains.some(d => d.name === name)) sections.delete(name);
    }
  }

  return {section, update};
})();
