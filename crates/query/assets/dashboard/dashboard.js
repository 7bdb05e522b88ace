// The AgentOS Metrics dashboard: reads GET /metrics (the same API, with the key or JWT the
// person enters, kept in sessionStorage only) and draws its per-day rows as SVG charts.
// No library and no network beyond the service: every chart is drawn here.
"use strict";

(() => {
  const KEY_STORAGE = "agentos-metrics.key";
  const SVG = "http://www.w3.org/2000/svg";
  const DAY_MS = 86400000;
  // Colours that keep apart for the common colour-vision deficiencies.
  const COLORS = {
    agent: "#2f6fde",
    team: "#e8890c",
    workflow: "#1a9e77",
    users: "#7b52c9",
    input: "#2f6fde",
    output: "#d14d8a",
    cost: "#1a9e77",
    model: "#2f6fde",
  };
  const TOKEN_KINDS = [
    ["input_tokens", "input"],
    ["output_tokens", "output"],
    ["total_tokens", "total"],
    ["cached_tokens", "cached (read)"],
    ["cache_write_tokens", "cache write"],
    ["reasoning_tokens", "reasoning"],
    ["audio_tokens", "audio"],
    ["input_audio_tokens", "audio input"],
    ["output_audio_tokens", "audio output"],
  ];

  const $ = (selector) => document.querySelector(selector);
  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const formatInteger = (n) => integer.format(n);
  const formatCost = (n) => "$" + n.toFixed(n !== 0 && Math.abs(n) < 10 ? 4 : 2);
  const formatCompactCost = (n) => (n !== 0 && Math.abs(n) < 1 ? "$" + n.toFixed(2) : "$" + compact.format(n));

  let lastBody = null;
  let lastRange = null;
  let drawnWidth = 0;

  // --- Dates ------------------------------------------------------------------------------

  const isoDay = (date) => date.toISOString().slice(0, 10);
  const parseDay = (text) => new Date(text + "T00:00:00Z");
  const today = () => isoDay(new Date());
  const daysBefore = (day, n) => isoDay(new Date(parseDay(day).getTime() - n * DAY_MS));
  const validDay = (text) => /^\d{4}-\d{2}-\d{2}$/.test(text || "") && !isNaN(parseDay(text));
  const shortDay = (day) => {
    const d = parseDay(day);
    return d.toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  };

  // Every day of the range, so that days without rows show as zero instead of vanishing.
  function daysOf(range, rows) {
    const byDay = new Map(rows.map((row) => [row.date.slice(0, 10), row]));
    const start = parseDay(range.start).getTime();
    const end = parseDay(range.end).getTime();
    const count = Math.round((end - start) / DAY_MS) + 1;
    if (count > 1000) {
      return rows.map((row) => ({ day: row.date.slice(0, 10), row }));
    }
    const days = [];
    for (let i = 0; i < count; i++) {
      const day = isoDay(new Date(start + i * DAY_MS));
      days.push({ day, row: byDay.get(day) || null });
    }
    return days;
  }

  // --- The key ----------------------------------------------------------------------------

  const storedKey = () => sessionStorage.getItem(KEY_STORAGE);

  function showKeyForm(message) {
    document.body.dataset.state = "needs-key";
    $("#key-form").hidden = false;
    $("#content").hidden = true;
    $("#status").textContent = "";
    const error = $("#key-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("#key").focus();
  }

  // --- Loading ----------------------------------------------------------------------------

  function currentRange() {
    return { start: $("#starting-date").value, end: $("#ending-date").value };
  }

  async function load() {
    const range = currentRange();
    if (!validDay(range.start) || !validDay(range.end)) {
      showError("Choose a start and an end date.");
      return;
    }
    if (range.start > range.end) {
      showError("The start date is after the end date.");
      return;
    }
    const query = new URLSearchParams({ starting_date: range.start, ending_date: range.end });
    history.replaceState(null, "", "?" + query.toString());
    document.body.dataset.state = "loading";
    $("#status").textContent = "Loading…";
    const headers = { Accept: "application/json" };
    const key = storedKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    let response;
    try {
      response = await fetch("metrics?" + query.toString(), { headers, cache: "no-store" });
    } catch (error) {
      showError("The service does not answer (" + error.message + ").");
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (response.status === 401) {
      if (key) {
        sessionStorage.removeItem(KEY_STORAGE);
        $("#forget-key").hidden = true;
        showKeyForm("That key was refused: " + detailOf(body, response));
      } else {
        showKeyForm("");
      }
      return;
    }
    if (!response.ok || !body || !Array.isArray(body.metrics)) {
      showError("GET /metrics answered " + response.status + ": " + detailOf(body, response));
      return;
    }
    $("#key-form").hidden = true;
    $("#forget-key").hidden = !key;
    lastBody = body;
    lastRange = range;
    render(body, range);
  }

  function detailOf(body, response) {
    return (body && body.detail) || response.statusText || "no detail";
  }

  function showError(message) {
    document.body.dataset.state = "error";
    $("#status").textContent = message;
    $("#status").classList.add("error");
  }

  // --- Rendering --------------------------------------------------------------------------

  const sum = (rows, get) => rows.reduce((total, row) => total + get(row), 0);
  const tokens = (row, kind) => (row && row.token_metrics && row.token_metrics[kind]) || 0;
  const cost = (row) => (row && row.token_metrics && row.token_metrics.cost) || 0;
  const runs = (row) => row.agent_runs_count + row.team_runs_count + row.workflow_runs_count;
  const sessions = (row) =>
    row.agent_sessions_count + row.team_sessions_count + row.workflow_sessions_count;

  // The width the charts are drawn at: their cards' inner width.
  const chartWidth = () => document.querySelector(".chart").clientWidth;

  function render(body, range) {
    // Shown first: the charts are drawn at the width their cards have.
    $("#content").hidden = false;
    draw(body, range);
    // Drawing can make the page tall enough for a scroll bar, which narrows the cards: then
    // once more at the width they have now.
    if (chartWidth() !== drawnWidth) {
      draw(body, range);
    }
    document.body.dataset.state = "ready";
  }

  function draw(body, range) {
    drawnWidth = chartWidth();
    const rows = body.metrics;
    const days = daysOf(range, rows);
    const status = $("#status");
    status.classList.remove("error");
    status.textContent = rows.length === 0
      ? "No data between " + range.start + " and " + range.end + "."
      : rows.length + " day" + (rows.length === 1 ? "" : "s") + " with data between " +
        range.start + " and " + range.end + ".";
    $("#updated-at").textContent = body.updated_at ? "Latest change " + body.updated_at + "." : "";

    const kinds = (prefix) => ["agent", "team", "workflow"].map((kind) => ({
      label: kind,
      value: sum(rows, (row) => row[kind + "_" + prefix + "_count"]),
    }));
    setTotal("runs", sum(rows, runs), formatInteger, kinds("runs"));
    setTotal("sessions", sum(rows, sessions), formatInteger, kinds("sessions"));
    const busiest = rows.reduce((best, row) => (row.users_count > (best ? best.users_count : -1) ? row : best), null);
    setTotal("users", busiest ? busiest.users_count : 0, formatInteger, null,
      busiest ? "on " + busiest.date.slice(0, 10) : "");
    setTotal("tokens", sum(rows, (row) => tokens(row, "total_tokens")), formatInteger, [
      { label: "input", value: sum(rows, (row) => tokens(row, "input_tokens")) },
      { label: "output", value: sum(rows, (row) => tokens(row, "output_tokens")) },
    ]);
    const totalCost = sum(rows, cost);
    setTotal("cost", totalCost, formatCost, null,
      rows.length ? formatCost(totalCost / rows.length) + " per day with data" : "");

    const countSeries = (prefix) => ["agent", "team", "workflow"].map((kind) => ({
      label: kind,
      color: COLORS[kind],
      value: (row) => (row ? row[kind + "_" + prefix + "_count"] : 0),
    }));
    drawBars("runs", days, countSeries("runs"), formatInteger);
    drawBars("sessions", days, countSeries("sessions"), formatInteger);
    drawBars("users", days, [
      { label: "users", color: COLORS.users, value: (row) => (row ? row.users_count : 0) },
    ], formatInteger);
    drawBars("tokens", days, [
      { label: "input", color: COLORS.input, value: (row) => tokens(row, "input_tokens") },
      { label: "output", color: COLORS.output, value: (row) => tokens(row, "output_tokens") },
    ], formatInteger);
    drawBars("cost", days, [{ label: "cost", color: COLORS.cost, value: cost }], formatCost,
      formatCompactCost);

    const models = new Map();
    for (const row of rows) {
      for (const model of row.model_metrics || []) {
        const name = model.model_id + (model.model_provider ? " · " + model.model_provider : "");
        models.set(name, (models.get(name) || 0) + model.count);
      }
    }
    const top = [...models.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, 8)
      .map(([label, value]) => ({ label, value }));
    drawRanking("models", top, COLORS.model);
    drawRanking("token-kinds", TOKEN_KINDS.map(([kind, label]) => ({
      label,
      value: sum(rows, (row) => tokens(row, kind)),
    })), COLORS.input);

    fillTable(days);
  }

  function setTotal(name, value, format, parts, detail) {
    const card = document.querySelector('[data-total="' + name + '"]');
    const shown = card.querySelector(".value");
    shown.textContent = format(value);
    shown.dataset.value = String(value);
    card.querySelector(".detail").textContent = parts
      ? parts.map((part) => part.label + " " + formatInteger(part.value)).join(" · ")
      : detail || "";
  }

  function fillTable(days) {
    const body = $("#days tbody");
    body.replaceChildren();
    for (const { day, row } of [...days].reverse()) {
      if (!row) {
        continue;
      }
      const tr = document.createElement("tr");
      const cells = [
        day,
        formatInteger(runs(row)),
        formatInteger(sessions(row)),
        formatInteger(row.users_count),
        formatInteger(tokens(row, "total_tokens")),
        formatCost(cost(row)),
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // --- Charts -----------------------------------------------------------------------------

  function svgElement(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) {
      element.setAttribute(key, String(value));
    }
    if (parent) {
      parent.appendChild(element);
    }
    return element;
  }

  function text(parent, x, y, content, attributes) {
    const element = svgElement("text", Object.assign({ x, y }, attributes), parent);
    element.textContent = content;
    return element;
  }

  // A round step so that about `count` steps reach `max`.
  function niceStep(max, count) {
    const raw = max / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const fraction = raw / power;
    const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 2.5 ? 2.5 : fraction <= 5 ? 5 : 10;
    return nice * power;
  }

  // Stacked bars, one per day, one segment per series.
  function drawBars(name, days, series, format, axisFormat) {
    const figure = document.querySelector('[data-chart="' + name + '"]');
    const holder = figure.querySelector(".chart");
    const width = Math.max(holder.clientWidth, 240);
    const height = width < 480 ? 180 : 220;
    const margin = { top: 10, right: 8, bottom: 24, left: 48 };
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const totals = days.map(({ row }) => series.reduce((total, s) => total + s.value(row), 0));
    const max = Math.max(0, ...totals);
    const step = max > 0 ? niceStep(max, 4) : 1;
    const top = max > 0 ? Math.ceil(max / step) * step : 4;
    const y = (value) => margin.top + plotHeight - (value / top) * plotHeight;

    const svg = svgElement("svg", {
      width, height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": figure.querySelector("figcaption").textContent,
    });
    const grid = svgElement("g", { class: "grid" }, svg);
    for (let value = 0; value <= top + step / 2; value += step) {
      const yy = Math.round(y(value)) + 0.5;
      svgElement("line", { x1: margin.left, x2: width - margin.right, y1: yy, y2: yy }, grid);
      text(grid, margin.left - 6, yy + 4, (axisFormat || compactInteger)(value), { "text-anchor": "end" });
    }

    const slot = plotWidth / Math.max(days.length, 1);
    const barWidth = Math.max(1, Math.min(32, slot * 0.75));
    const bars = svgElement("g", { class: "bars" }, svg);
    days.forEach(({ day, row }, i) => {
      const x = margin.left + i * slot + (slot - barWidth) / 2;
      const group = svgElement("g", { class: "day" }, bars);
      const title = svgElement("title", {}, group);
      title.textContent = day + "\n" + series.map((s) => s.label + ": " + format(s.value(row))).join("\n");
      svgElement("rect", { class: "hover", x: margin.left + i * slot, y: margin.top, width: slot, height: plotHeight }, group);
      let base = 0;
      for (const s of series) {
        const value = s.value(row);
        if (value > 0) {
          const y1 = y(base + value);
          svgElement("rect", {
            class: "bar", x, y: y1, width: barWidth, height: Math.max(1, y(base) - y1), fill: s.color,
            "data-series": s.label, "data-value": value,
          }, group);
        }
        base += value;
      }
    });

    // Date labels that do not overlap: every k-th day.
    const labels = svgElement("g", { class: "axis" }, svg);
    const every = Math.max(1, Math.ceil(44 / slot));
    days.forEach(({ day }, i) => {
      if (i % every === 0) {
        text(labels, margin.left + i * slot + slot / 2, height - 6, shortDay(day), { "text-anchor": "middle" });
      }
    });

    holder.replaceChildren(svg);
    const legend = figure.querySelector(".legend");
    legend.replaceChildren(...(series.length > 1 ? series : []).map((s) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.dataset.color = s.color;
      const total = days.reduce((acc, { row }) => acc + s.value(row), 0);
      item.append(swatch, s.label + " " + format(total));
      return item;
    }));
    for (const swatch of legend.querySelectorAll(".swatch")) {
      swatch.style.background = swatch.dataset.color;
    }
  }

  const compactInteger = (n) => compact.format(n);

  // Horizontal bars, largest first: the top models, the token kinds.
  function drawRanking(name, items, color) {
    const figure = document.querySelector('[data-chart="' + name + '"]');
    const holder = figure.querySelector(".chart");
    if (items.length === 0) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "Nothing in this range.";
      holder.replaceChildren(empty);
      return;
    }
    const width = Math.max(holder.clientWidth, 240);
    const row = 26;
    const height = items.length * row + 4;
    const labelWidth = Math.min(200, width * 0.42);
    const valueWidth = 64;
    const barSpace = width - labelWidth - valueWidth - 12;
    const max = Math.max(1, ...items.map((item) => item.value));
    const svg = svgElement("svg", {
      width, height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": figure.querySelector("figcaption").textContent,
    });
    items.forEach((item, i) => {
      const yy = i * row + 2;
      const group = svgElement("g", { class: "item" }, svg);
      const title = svgElement("title", {}, group);
      title.textContent = item.label + ": " + formatInteger(item.value);
      const label = text(group, labelWidth - 6, yy + row / 2 + 4, item.label, { "text-anchor": "end", class: "label" });
      clip(label, labelWidth - 10);
      svgElement("rect", {
        class: "bar", x: labelWidth, y: yy + 4, height: row - 8,
        width: Math.max(item.value > 0 ? 2 : 0, (item.value / max) * barSpace), fill: color,
        "data-value": item.value,
      }, group);
      text(group, width - 4, yy + row / 2 + 4, compactInteger(item.value), { "text-anchor": "end", class: "value" });
    });
    holder.replaceChildren(svg);
  }

  // Shortens a label that does not fit, once it is in the document and can be measured.
  function clip(element, room) {
    requestAnimationFrame(() => {
      const full = element.textContent;
      let shown = full;
      while (shown.length > 3 && element.getComputedTextLength() > room) {
        shown = shown.slice(0, -2);
        element.textContent = shown + "…";
      }
    });
  }

  // --- Wiring -----------------------------------------------------------------------------

  function setRange(start, end) {
    $("#starting-date").value = start;
    $("#ending-date").value = end;
  }

  function start() {
    const params = new URLSearchParams(location.search);
    const end = validDay(params.get("ending_date")) ? params.get("ending_date") : today();
    const begin = validDay(params.get("starting_date")) ? params.get("starting_date") : daysBefore(end, 29);
    setRange(begin, end);

    $("#range").addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
    for (const button of document.querySelectorAll("[data-days]")) {
      button.addEventListener("click", () => {
        const end = today();
        setRange(daysBefore(end, Number(button.dataset.days) - 1), end);
        load();
      });
    }
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("#key").value.trim();
      if (key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        $("#key").value = "";
        load();
      }
    });
    $("#forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      $("#forget-key").hidden = true;
      lastBody = null;
      load();
    });
    // Redrawn at the new width whenever the cards change width: a rotated phone, a resized
    // window, or the scroll bar that appears once the charts make the page tall.
    let resizing = null;
    new ResizeObserver(() => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (lastBody && document.body.dataset.state === "ready" && chartWidth() !== drawnWidth) {
          render(lastBody, lastRange);
        }
      }, 100);
    }).observe($("#content"));
    load();
  }

  start();
})();
