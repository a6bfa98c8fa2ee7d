// Package testsapi holds what the service's packages share from the
// repository's root: the OpenAPI document, embedded so the binary serves
// exactly the spec it was built with.
package testsapi

import _ "embed"

// OpenAPI is openapi.yaml, the contract of the HTTP API.
//
//go:embed openapi.yaml
var OpenAPI []byte
