package main

import (
	"strings"
	"testing"

	"sluice.dev/sluice"
)

func headers(pairs ...string) []sluice.Header {
	out := make([]sluice.Header, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, sluice.Header{Name: pairs[i], Value: []byte(pairs[i+1])})
	}
	return out
}

func mustPolicy(t *testing.T, config Config) *Policy {
	t.Helper()
	policy, err := NewPolicy(config)
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return policy
}

func TestRequiredHeaders(t *testing.T) {
	policy := mustPolicy(t, Config{Require: []string{"X-Api-Key", "x-tenant"}})
	if got := policy.Check(headers("x-api-key", "k", "x-tenant", "t")); got.Status != 0 {
		t.Fatalf("both present: %+v", got)
	}
	got := policy.Check(headers("x-api-key", "k"))
	if got.Status != 400 || got.Reason != "missing required header x-tenant" {
		t.Fatalf("one missing: %+v", got)
	}
}

func TestDenyRulesMatchCaseInsensitively(t *testing.T) {
	policy := mustPolicy(t, Config{Deny: []DenyRule{
		{Header: "User-Agent", Contains: "SQLMap"},
		{Header: "x-debug"},
	}})
	cases := []struct {
		headers []sluice.Header
		status  int
	}{
		{headers("user-agent", "curl/8.0"), 0},
		{headers("user-agent", "sqlmap/1.7-dev"), 403},
		{headers("user-agent", "Mozilla (SQLMAP scan)"), 403},
		{headers("x-debug", ""), 403},
		{headers("x-debugger", "1"), 0},
	}
	for _, c := range cases {
		if got := policy.Check(c.headers); got.Status != c.status {
			t.Errorf("%v: got %+v, want %d", c.headers, got, c.status)
		}
	}
}

func TestHeaderValueLimit(t *testing.T) {
	policy := mustPolicy(t, Config{MaxValueBytes: 8, Require: []string{"x-api-key"}})
	if got := policy.Check(headers("x-api-key", "12345678")); got.Status != 0 {
		t.Fatalf("at the limit: %+v", got)
	}
	// The size limit is checked first: a request with an oversized header gets 431 even when a
	// required header is missing too.
	got := policy.Check(headers("x-note", "123456789"))
	if got.Status != 431 || !strings.Contains(got.Reason, "x-note") {
		t.Fatalf("over the limit: %+v", got)
	}
}

func TestInvalidConfigsAreRefusedWithTheKey(t *testing.T) {
	cases := map[string]Config{
		"require":         {Require: []string{"bad header"}},
		"strip_request":   {StripRequest: []string{""}},
		"strip_response":  {StripResponse: []string{"x:y"}},
		"deny[1].header":  {Deny: []DenyRule{{Header: "ok"}, {Header: "no way"}}},
		"set_response":    {SetResponse: map[string]string{"a b": "c"}},
		"max_value_bytes": {MaxValueBytes: -1},
	}
	for key, config := range cases {
		_, err := NewPolicy(config)
		if err == nil || !strings.HasPrefix(err.Error(), key) {
			t.Errorf("%s: got %v", key, err)
		}
	}
}

func TestNamesAreNormalisedToLowerCase(t *testing.T) {
	policy := mustPolicy(t, Config{
		StripRequest:  []string{"X-Internal-User"},
		StripResponse: []string{"Server"},
		SetResponse:   map[string]string{"X-Frame-Options": "DENY"},
	})
	if policy.stripRequest[0] != "x-internal-user" || policy.stripResponse[0] != "server" {
		t.Fatalf("strip lists: %v %v", policy.stripRequest, policy.stripResponse)
	}
	if policy.setResponse[0].Name != "x-frame-options" || string(policy.setResponse[0].Value) != "DENY" {
		t.Fatalf("set_response: %+v", policy.setResponse)
	}
}

func TestTheFilterTakesPartInBothHeadPhases(t *testing.T) {
	phases := sluice.PhasesOf(&Filter{policy: mustPolicy(t, Config{})})
	if phases != sluice.PhaseRequestHeaders|sluice.PhaseResponseHeaders {
		t.Fatalf("phases: %b", phases)
	}
}
