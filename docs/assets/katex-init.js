// Typeset the arithmatex spans with the bundled KaTeX (no CDN). Material's instant navigation is off, so every page
// load runs this once.
document.addEventListener("DOMContentLoaded", function () {
  renderMathInElement(document.body, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    throwOnError: false,
  });
});
