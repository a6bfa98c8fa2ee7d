package api

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"path"
	"time"

	"github.com/go-chi/chi/v5"
)

// docsFiles is the documentation page: our HTML and start-up script, and
// Swagger UI vendored from npm (docs/swagger-ui/README.md says which
// version; scripts/vendor-swagger-ui.sh updates it). Nothing is fetched from
// elsewhere, so the page works offline.
//
//go:embed docs/index.html docs/docs.js docs/swagger-ui/swagger-ui-bundle.js docs/swagger-ui/swagger-ui.css
var docsFiles embed.FS

// docsCSP lets the page run only this server's scripts and talk only to
// this server. Swagger UI sets inline styles and uses data: images (its
// icons), hence the two exceptions.
const docsCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docsAsset is one embedded file as served: content, type and ETag.
type docsAsset struct {
	body        []byte
	contentType string
	etag        string
}

// docsAssets maps the names under /docs/ to their files; what is not here
// is 404, so the embedded tree is never listed.
var docsAssets = map[string]docsAsset{
	"swagger-ui-bundle.js": mustDocsAsset("docs/swagger-ui/swagger-ui-bundle.js"),
	"swagger-ui.css":       mustDocsAsset("docs/swagger-ui/swagger-ui.css"),
	"docs.js":              mustDocsAsset("docs/docs.js"),
}

var docsPage = mustDocsAsset("docs/index.html")

func mustDocsAsset(name string) docsAsset {
	b, err := docsFiles.ReadFile(name)
	if err != nil {
		panic(err) // a name above that go:embed does not list: a build-time mistake
	}
	sum := sha256.Sum256(b)
	types := map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
	}
	return docsAsset{body: b, contentType: types[path.Ext(name)], etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

// serve writes the asset; ServeContent answers If-None-Match with 304 and
// handles Range. no-cache makes browsers revalidate, cheaply, so a new
// binary's files are picked up at once.
func (a docsAsset) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("ETag", a.etag)
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

// handleRoot handles GET /: 302 to the documentation.
func handleRoot() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/docs", http.StatusFound)
	})
}

// handleDocs handles GET /docs: 200, the documentation page.
func handleDocs() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", docsCSP)
		docsPage.serve(w, r)
	})
}

// handleDocsAsset handles GET /docs/{asset}: 200, 304, 404.
func handleDocsAsset() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := docsAssets[chi.URLParam(r, "asset")]
		if !ok {
			writeProblem(w, http.StatusNotFound, "There is no resource at this path.", nil)
			return
		}
		a.serve(w, r)
	})
}
