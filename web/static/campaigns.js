// Live progress on the campaign pages: poll each campaign's progress URL and move its bar.
(function () {
  "use strict";

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
    document.querySelectorAll("[data-campaign='" + c.id + "'] [data-part=rate], " +
                              ".campaign-facts [data-part=rate]").forEach(function (el) {
      el.textContent = (c.sending_rate || 0).toFixed(1);
    });
    var chart = row.querySelector("[data-part=chart]");
    if (chart && c.chart) { drawChart(chart, c.chart); }
    if (c.scale) { drawScale(row, c.scale); }
    var running = document.querySelector("[data-part=elapsed]");
    if (running && c.elapsed_text && row.tagName !== "TR") { running.textContent = c.elapsed_text; }
    if (row.tagName !== "TR") { showActions(c); }
  }

  // Every lever the status allows, and no other (the page is never reloaded for it).
  function showActions(c) {
    document.querySelectorAll("[data-when]").forEach(function (el) {
      var allowed = el.dataset.when.split(" ").indexOf(c.status) !== -1;
      if (el.dataset.needsFailed && !c.counts.failed) { allowed = false; }
      el.hidden = !allowed;
    });
  }

  function drawScale(row, scale) {
    ["top", "middle", "first", "last", "unit"].forEach(function (name) {
      var el = row.querySelector("[data-part=chart-" + name + "]");
      if (el && scale[name] !== "") { el.textContent = scale[name]; }
    });
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
    if (row.dataset.final === "true") { return; }
    var timer = setInterval(function () {
      fetch(row.dataset.progressUrl, {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (c) {
          render(row, c);
          if (c.final) { clearInterval(timer); }
        })
        .catch(function (status) {  // a blip: try again next second; gone or signed out: stop
          if (status === 404 || status === 401) { clearInterval(timer); }
        });
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

  // A confirm before anything is sent (or cancelled): data-confirm on the form or its button.
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var text = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (text && !window.confirm(text)) { event.preventDefault(); }
  });

  localTimes();
  document.querySelectorAll("[data-progress-url]").forEach(watch);
})();
