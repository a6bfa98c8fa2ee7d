// Starts Swagger UI on the OpenAPI document this server serves. A script
// file, not an inline script, so the page's Content-Security-Policy can
// forbid inline scripts.
"use strict";

// Point "Try it out" at the server this page came from, whatever host and
// port it was reached on, instead of the document's localhost:8080 default.
function serversFromOrigin() {
  return {
    statePlugins: {
      spec: {
        wrapActions: {
          updateJsonSpec: function (orig) {
            return function (spec) {
              spec.servers = [{ url: window.location.origin, description: "This server" }];
              return orig(spec);
            };
          },
        },
      },
    },
  };
}

window.ui = SwaggerUIBundle({
  url: new URL("openapi.yaml", window.location.href).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // the default sends the document to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis],
  plugins: [serversFromOrigin],
  layout: "BaseLayout",
});
