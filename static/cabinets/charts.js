/* Jetstream charts: draws every <canvas data-chart="ID"> from the JSON data island
 * <script type="application/json" id="ID">{"type": "line", "labels": [...], "datasets": [{"label": "...", "data": [...]}],
 *   "unit": "rub" | "number" | "percent", "stacked": false}</script>
 * with the vendored Chart.js (static/vendor/chartjs). Values are plain numbers (rubles, not micro-rubles);
 * axis and tooltip numbers follow the page's language (<html lang>): 1 234,56 ₽ in Russian.
 * Charts inside content swapped in by HTMX are drawn after the swap. */
(function () {
  "use strict";
  var palette = ["#1f5fd6", "#067647", "#b54708", "#7a5af8", "#c11574", "#0e9384", "#5b6470", "#b42318"];

  function formatter(unit) {
    var lang = document.documentElement.lang || "ru";
    var number = new Intl.NumberFormat(lang, {maximumFractionDigits: 2});
    var money = new Intl.NumberFormat(lang, {style: "currency", currency: "RUB", maximumFractionDigits: 2});
    var percent = new Intl.NumberFormat(lang, {style: "percent", maximumFractionDigits: 1});
    if (unit === "rub") return function (v) { return money.format(v); };
    if (unit === "percent") return function (v) { return percent.format(v); };
    return function (v) { return number.format(v); };
  }

  function draw(canvas) {
    if (canvas.dataset.drawn || typeof window.Chart === "undefined") return;
    var island = document.getElementById(canvas.dataset.chart);
    if (!island) return;
    var spec;
    try { spec = JSON.parse(island.textContent); } catch (e) { return; }
    var format = formatter(spec.unit);
    var datasets = (spec.datasets || []).map(function (set, i) {
      var colour = set.color || palette[i % palette.length];
      return Object.assign({borderColor: colour, backgroundColor: spec.type === "line" ? colour + "33" : colour,
                            borderWidth: 2, pointRadius: 0, tension: 0.25, fill: spec.type === "line" && !!spec.fill}, set);
    });
    canvas.dataset.drawn = "1";
    new window.Chart(canvas, {
      type: spec.type || "line",
      data: {labels: spec.labels || [], datasets: datasets},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: {mode: "index", intersect: false},
        scales: spec.type === "doughnut" || spec.type === "pie" ? {} : {
          x: {stacked: !!spec.stacked, grid: {display: false}},
          y: {stacked: !!spec.stacked, beginAtZero: true, ticks: {callback: function (v) { return format(v); }}}
        },
        plugins: {
          legend: {display: datasets.length > 1 || spec.type === "doughnut", position: "bottom"},
          tooltip: {callbacks: {label: function (ctx) {
            var v = ctx.parsed && typeof ctx.parsed === "object" ? ctx.parsed.y : ctx.parsed;
            return (ctx.dataset.label ? ctx.dataset.label + ": " : "") + format(v);
          }}}
        }
      }
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  window.JetstreamCharts = {drawAll: drawAll};
  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawAll(event.target); });
})();
