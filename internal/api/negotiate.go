package api

import (
	"mime"
	"strconv"
	"strings"
)

// negotiate picks the offer the Accept header prefers (RFC 9110 §12.5.1):
// the highest q of the most specific matching range, ties going to the
// earlier offer. An empty header accepts the first offer; "" means none is
// acceptable.
func negotiate(accept string, offers ...string) string {
	if strings.TrimSpace(accept) == "" {
		return offers[0]
	}
	best, bestQ := "", 0.0
	for _, offer := range offers {
		if q := quality(accept, offer); q > bestQ {
			best, bestQ = offer, q
		}
	}
	return best
}

// quality returns the q the Accept header gives offer: that of the most
// specific range matching it (exact type, then type/*, then */*), 0 if none.
func quality(accept, offer string) float64 {
	typ, _, _ := strings.Cut(offer, "/")
	q, specificity := 0.0, -1
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		s := -1
		switch mt {
		case offer:
			s = 2
		case typ + "/*":
			s = 1
		case "*/*":
			s = 0
		}
		if s <= specificity {
			continue
		}
		pq := 1.0
		if v, ok := params["q"]; ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				continue
			}
			pq = f
		}
		q, specificity = pq, s
	}
	return q
}
