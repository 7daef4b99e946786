// Copy buttons: <button data-copy="element-id"> copies that element's text.
document.querySelectorAll("[data-copy]").forEach(function (button) {
  button.addEventListener("click", function (event) {
    event.preventDefault();
    const text = document.getElementById(button.dataset.copy).textContent.trim();
    const done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard) { navigator.clipboard.writeText(text).then(done, done); } else { done(); }
  });
});
