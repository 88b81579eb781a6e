// /api/docs: Swagger UI over the OpenAPI document named by data-spec-url. Kept out of
// the page so that its Content-Security-Policy allows scripts from the app only.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof window.SwaggerUIBundle !== "function") { return; }
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    domNode: root,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,  // never ask another site to validate the document
    persistAuthorization: false  // the token stays in this tab's memory only
  });
}());
