// Submits the page's form marked data-autosubmit once the page is loaded (for instance a signed
// answer posted on to an application). Without JavaScript, its button does the same.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-autosubmit]");
  if (form) { form.submit(); }
});
