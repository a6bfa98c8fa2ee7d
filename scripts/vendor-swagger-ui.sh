#!/usr/bin/env bash
# Vendors Swagger UI from the npm registry into internal/api/docs/swagger-ui, where go:embed puts it into
# the binary (GET /docs works offline, with no CDN). Usage: scripts/vendor-swagger-ui.sh [version]
# To upgrade: run it with the new version, check GET /docs (go test ./internal/api -run Docs), commit.
set -euo pipefail

version=${1:-5.35.0}
cd "$(dirname "$0")/.."
dest=internal/api/docs/swagger-ui
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "swagger-ui-dist@$version" >/dev/null)
tgz=$(echo "$tmp"/swagger-ui-dist-*.tgz)
integrity=$(npm view "swagger-ui-dist@$version" dist.integrity)
# npm pack has already checked the tarball against this integrity; record it for reviewers.
tar -xzf "$tgz" -C "$tmp"

mkdir -p "$dest"
# The standalone bundle and its style sheet are all the page needs; the licences travel with them.
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
	cp "$tmp/package/$f" "$dest/$f"
done
cat >"$dest/README.md" <<MD
# Swagger UI $version (vendored)

Copied unchanged from the npm package \`swagger-ui-dist@$version\` (integrity \`$integrity\`) by
\`scripts/vendor-swagger-ui.sh $version\`. Licence: Apache-2.0, see LICENSE and NOTICE here;
swagger-ui-bundle.js.LICENSE.txt lists the licences of the libraries bundled into swagger-ui-bundle.js.
The service embeds swagger-ui-bundle.js and swagger-ui.css (internal/api/docs.go) and serves them under /docs/.
MD
echo "vendored swagger-ui-dist@$version into $dest"
