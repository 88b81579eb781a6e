// Live delivery status on /validate: polls /verify/status/<id> (status words only,
// never a code) and updates the page in place until the status is final.
(function () {
  "use strict";
  var box = document.querySelector("[data-status-url]");
  if (!box) { return; }
  var url = box.getAttribute("data-status-url");
  var statusEl = box.querySelector("[data-otp-status]");
  var labelEl = box.querySelector("[data-otp-label]");
  var reasonEl = box.querySelector("[data-otp-reason]");
  var delay = 1000;

  function show(state) {
    box.setAttribute("data-status", state.status);
    statusEl.textContent = state.status;
    labelEl.textContent = state.label;
    if (state.reason) {
      reasonEl.querySelector("code").textContent = state.reason;
      reasonEl.hidden = false;
    } else {
      reasonEl.hidden = true;
    }
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (state) {
        show(state);
        if (!state.final) { window.setTimeout(poll, delay); }
      })
      .catch(function () {
        delay = Math.min(delay * 2, 15000);
        window.setTimeout(poll, delay);
      });
  }

  if (box.getAttribute("data-final") !== "true") {
    window.setTimeout(poll, delay);
  }
})();
