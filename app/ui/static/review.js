// Review by keyboard: 1-9 pick a candidate, 0 or n "none of these", s skip.
document.addEventListener("keydown", function (event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  var key = event.key.toLowerCase();
  if (key === "s") {
    var skip = document.getElementById("skip");
    if (skip) { event.preventDefault(); window.location.href = skip.href; }
    return;
  }
  if (key === "n") key = "0";
  var button = document.querySelector('#decide button[data-key="' + key + '"]');
  if (button) { event.preventDefault(); button.click(); }
});
