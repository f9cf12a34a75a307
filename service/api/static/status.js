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

// The submit form: suggest Hub repos as the repo id is typed (the server asks the Hub: /ui/hub-search).
(function () {
  "use strict";
  var input = document.getElementById("repo");
  var list = document.getElementById("repo-suggestions");
  if (!input || !list || !window.fetch) { return; }
  var timer = null, asked = "";

  function suggest() {
    var text = input.value.trim();
    if (text.length < 2 || text === asked) { return; }
    asked = text;
    fetch("/ui/hub-search?q=" + encodeURIComponent(text), { credentials: "same-origin", cache: "no-store",
                                                           headers: { "Accept": "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { models: [] }; })
      .then(function (data) {
        if (text !== asked) { return; }
        while (list.firstChild) { list.removeChild(list.firstChild); }
        (data.models || []).forEach(function (id) {
          var option = document.createElement("option");
          option.value = id;  // text, never markup
          list.appendChild(option);
        });
        list.setAttribute("data-for", text);
      })
      .catch(function () {});
  }
  input.addEventListener("input", function () {
    if (timer) { window.clearTimeout(timer); }
    timer = window.setTimeout(suggest, 200);
  });
})();

// The repo page: a Copy button beside each download line.
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("button.copy[data-copy]"), function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) { return; }
      var text = source.textContent;
      var done = function () { button.textContent = "Copied"; button.setAttribute("data-copied", "true"); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Select and copy"; });
      } else {
        button.textContent = "Select and copy";
      }
    });
  });
})();
