// The Outbox list refreshes itself: it polls the newest message's name and
// reloads the first page when a new one has arrived (or the outbox was cleared).
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
  var live = document.querySelector("[data-outbox-live]");
  if (!live || live.hidden) { return; }
  var known = live.getAttribute("data-newest");
  function poll() {
    fetch(live.getAttribute("data-latest-url"), {headers: {"Accept": "application/json"}})
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (latest) {
        if (latest && latest.newest !== known) { location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
