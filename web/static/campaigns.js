// Live progress on the campaign pages: poll each campaign's progress URL and move its bar.
(function () {
  "use strict";
  var FINAL = ["completed", "cancelled"];

  function render(row, c) {
    var n = c.counts;
    var settled = n.sent + n.failed + n.suppressed + n.cancelled;
    var bar = row.querySelector("[data-part=bar]");
    bar.max = c.total || 1;
    bar.value = settled;
    var text = n.sent + " sent · " + n.failed + " failed · " + (n.queued + n.deferred + n.sending) + " to go";
    if (n.suppressed) { text += " · " + n.suppressed + " suppressed"; }
    if (n.cancelled) { text += " · " + n.cancelled + " cancelled"; }
    row.querySelector("[data-part=counts]").textContent = text;
    row.querySelector("[data-part=status]").textContent = c.status;
    var rate = row.querySelector("[data-part=rate]");
    if (rate) { rate.textContent = (c.sending_rate || 0).toFixed(1); }
    var chart = row.querySelector("[data-part=chart]");
    if (chart && c.chart) { drawChart(chart, c.chart); }
  }

  // The sends-over-time bars, as the server computed them (see web/campaigns/timing.py).
  function drawChart(svg, bars) {
    var ns = "http://www.w3.org/2000/svg";
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    bars.forEach(function (b) {
      var rect = document.createElementNS(ns, "rect");
      ["x", "y"].forEach(function (k) { rect.setAttribute(k, b[k]); });
      rect.setAttribute("width", b.w);
      rect.setAttribute("height", b.h);
      var title = document.createElementNS(ns, "title");
      title.textContent = b.label;
      rect.appendChild(title);
      svg.appendChild(rect);
    });
    var empty = svg.parentNode.querySelector(".empty-chart");
    if (empty && bars.length) { empty.remove(); }
  }

  function watch(row) {
    var initial = row.querySelector("[data-part=status]").textContent.trim();
    if (FINAL.indexOf(initial) !== -1) { return; }
    var timer = setInterval(function () {
      fetch(row.dataset.progressUrl, {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (c) {
          render(row, c);
          if (FINAL.indexOf(c.status) !== -1) {
            clearInterval(timer);
            if (initial !== c.status && document.querySelector(".campaign-actions")) { location.reload(); }
          }
        })
        .catch(function () { clearInterval(timer); });
    }, 1000);
  }

  // Times arrive as ISO 8601 in UTC with the UTC text shown; show them in the viewer's zone.
  function localTimes() {
    document.querySelectorAll("time.local-time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) { return; }
      el.title = el.textContent;
      el.textContent = when.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"});
      el.dataset.local = "1";
    });
  }

  localTimes();
  document.querySelectorAll("[data-progress-url]").forEach(watch);
})();
