// Earmark console: progressive enhancement only. Every page works without this file.
// Served from /console/static under a CSP that allows no inline script.
"use strict";

// "Copy" buttons: <button data-copy="ID"> copies the value of the input with that id.
function enableCopyButtons() {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.dataset.copy);
      var status = button.parentElement.querySelector(".copied");
      field.select();
      var done = function () { if (status) { status.textContent = "Copied."; } };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          if (status) { status.textContent = "Press Ctrl+C to copy."; }
        });
      } else if (document.execCommand && document.execCommand("copy")) {
        done();
      }
    });
  });
}

// Charts: <div class="chart" data-chart="DATA_ID" data-series="spend|hours" data-unit="$">
// draws, from the element DATA_ID's data-values ({days, spend: {label: [..]}, hours}),
// one line per tenant or model with uPlot.
var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];

function drawCharts() {
  if (typeof uPlot === "undefined") { return; }
  document.querySelectorAll(".chart[data-chart]").forEach(function (box) {
    var source = document.getElementById(box.dataset.chart);
    if (!source) { return; }
    var values = JSON.parse(source.dataset.values);
    var lines = values[box.dataset.series] || {};
    var labels = Object.keys(lines);
    var unit = box.dataset.unit;
    var series = [{}];
    var data = [values.days];
    labels.forEach(function (label, n) {
      series.push({
        label: label,
        stroke: PALETTE[n % PALETTE.length],
        width: 2,
        value: function (u, v) { return v == null ? "—" : (unit === "$" ? "$" + v.toFixed(4) : v.toFixed(2) + " h"); },
      });
      data.push(lines[label]);
    });
    if (labels.length === 0) {
      box.textContent = "No calls in this range.";
      return;
    }
    var width = Math.max(280, Math.min(box.parentElement.clientWidth || 600, 900));
    var tick = function (u, ticks) {
      return ticks.map(function (v) { return (unit === "$" ? "$" : "") + Number(v.toPrecision(3)) + (unit === "h" ? " h" : ""); });
    };
    new uPlot({ width: width, height: 240, series: series, axes: [{}, { size: 80, values: tick }] }, data, box);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  enableCopyButtons();
  drawCharts();
});
