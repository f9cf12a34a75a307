// coreml-publisher status page: while a job runs, ask the page's JSON route for its parts again and swap them in.
// The parts are HTML rendered (and escaped) by the server; without JavaScript the page is complete, just static.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main || !window.fetch) { return; }
  var url = main.getAttribute("data-live");
  var every = 1000 * (parseFloat(main.getAttribute("data-every")) || 2);

  function update() {
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (response.status === 401) { throw new Error("signed out"); }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && data.parts) {
          Object.keys(data.parts).forEach(function (id) {
            var element = document.getElementById(id);
            if (element) { element.innerHTML = data.parts[id]; }
          });
        }
        if (!data || data.live) { window.setTimeout(update, every); }
        else { main.removeAttribute("data-live"); }
      })
      .catch(function (error) {
        if (String(error.message) !== "signed out") { window.setTimeout(update, every * 2); }
      });
  }
  window.setTimeout(update, every);
})();
