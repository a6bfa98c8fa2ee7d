package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
)

// Counts of GET /tests: a client asks with Prefer: count=exact or
// count=estimated (RFC 7240), and a JSON page answers the count of the
// collection in X-Total-Count, with Preference-Applied saying which kind it
// is. X-Total-Count (json-server's, react-admin's) rather than PostgREST's
// Content-Range "0-99/1234": the pages here are keyset pages, which have no
// offset to put before the slash, and Content-Range on a 200 is not what
// HTTP means by it (RFC 9110 §14.4: the range a 206 carries).

// Kinds of count a request can ask for.
const (
	countExact     = "exact"
	countEstimated = "estimated"
)

// countPreference returns the count r asks for in Prefer: "exact",
// "estimated", or "" (none, or one this service does not know: a
// preference is a wish, and an unknown one is ignored, RFC 7240 §2).
func countPreference(r *http.Request) string {
	for _, v := range r.Header.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			pref, _, _ = strings.Cut(pref, ";") // parameters: none are defined
			name, value, _ := strings.Cut(pref, "=")
			if !strings.EqualFold(strings.TrimSpace(name), "count") {
				continue
			}
			switch value = strings.ToLower(strings.Trim(strings.TrimSpace(value), `"`)); value {
			case countExact, countEstimated:
				return value
			}
		}
	}
	return ""
}

// writeCount counts the rows as kind asks and sets X-Total-Count and
// Preference-Applied. An exact count is bounded by ctx (REQUEST_TIMEOUT:
// then the request is a 503). An estimate comes from the database's
// statistics; where it has none yet (a table never analyzed), the count is
// exact, and Preference-Applied says so. With byName the collection is the
// rows of that name, found already: the count is found, whatever kind.
func writeCount(ctx context.Context, w http.ResponseWriter, st testStore, kind string, byName bool, found int) error {
	n, known := int64(found), byName
	var err error
	if kind == countEstimated && !byName {
		n, known, err = st.EstimateCount(ctx)
		if err != nil {
			return err
		}
	}
	if !known {
		kind = countExact // never claim an estimate that is not one
		if n, err = st.Count(ctx); err != nil {
			return err
		}
	}
	w.Header().Set("Preference-Applied", "count="+kind)
	w.Header().Set("X-Total-Count", strconv.FormatInt(n, 10))
	return nil
}
