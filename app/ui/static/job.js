// Live progress: poll the job's status once a second until it ends, then show the links.
(function () {
  var box = document.getElementById("job");
  if (!box || box.dataset.terminal === "yes") return;
  var url = box.dataset.statusUrl;
  function tick() {
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (s) {
      var state = document.getElementById("state");
      state.textContent = s.state;
      state.className = "state state-" + s.state;
      var p = s.progress || {};
      document.getElementById("stage").textContent = p.stage || "";
      var bar = document.getElementById("bar");
      bar.max = p.total || 1;
      bar.value = p.done || 0;
      var detail = p.epoch ? "epoch " + p.epoch + "/" + p.epochs + " · loss " + p.last_loss +
        (p.eta_seconds != null ? " · ETA " + Math.round(p.eta_seconds) + " s" : "") : "";
      document.getElementById("detail").textContent = detail;
      if (s.terminal) {
        if (s.state === "succeeded") document.getElementById("links").hidden = false;
        if (s.error) document.getElementById("detail").textContent = s.error;
        return;
      }
      setTimeout(tick, 1000);
    }).catch(function () { setTimeout(tick, 3000); });
  }
  setTimeout(tick, 500);
})();
