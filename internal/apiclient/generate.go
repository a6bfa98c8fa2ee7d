// Package apiclient is a typed Go client for the service, generated from
// openapi.yaml by oapi-codegen (client.gen.go; do not edit it by hand). The
// end-to-end tests drive the real server through it, so the document, the
// server and the client cannot drift apart.
//
// It is internal on purpose: its Go identifiers follow the document and
// change when the document does, which a public package would have to
// promise not to do. Programs outside this module generate their own client
// from /openapi.yaml (see the README).
package apiclient

//go:generate go run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2 -config oapi-codegen.yaml ../../openapi.yaml
