package main

import (
	"reflect"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/store"
)

// TestConfigDefaultsMatchStore: the network settings' defaults are the
// store's (tests that build their pool with store.NewPool run the
// connections the service runs); envconfig needs them as literals here.
func TestConfigDefaultsMatchStore(t *testing.T) {
	for field, want := range map[string]time.Duration{
		"DBTCPKeepAlive":   store.DefaultTCPKeepAlive,
		"DBTCPUserTimeout": store.DefaultTCPUserTimeout,
		"DBIdlePing":       store.DefaultIdlePing,
	} {
		f, _ := reflect.TypeFor[config]().FieldByName(field)
		got, err := time.ParseDuration(f.Tag.Get("default"))
		if err != nil || got != want {
			t.Errorf("%s (%s) defaults to %q, want %s as in store", field, f.Tag.Get("envconfig"), f.Tag.Get("default"), want)
		}
	}
}
