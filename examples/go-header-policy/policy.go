package main

import (
	"errors"
	"strconv"
	"strings"

	"sluice.dev/sluice"
)

// Config is the route's header policy. Every list and map is optional.
type Config struct {
	// Require: request headers every request must carry (400 when one is missing).
	Require []string `json:"require"`
	// Deny: requests whose header matches a rule are refused (403).
	Deny []DenyRule `json:"deny"`
	// MaxValueBytes: the longest request header value accepted (431 past it); 0: no limit.
	MaxValueBytes int `json:"max_value_bytes"`
	// StripRequest: request headers removed before the upstream sees them (headers only trusted
	// when the edge sets them, such as x-internal-user).
	StripRequest []string `json:"strip_request"`
	// StripResponse: response headers removed before the client sees them (server,
	// x-powered-by, ...).
	StripResponse []string `json:"strip_response"`
	// SetResponse: response headers set on every response (security headers).
	SetResponse map[string]string `json:"set_response"`
}

// DenyRule refuses requests whose header value contains (case-insensitively) a substring, or
// that carry the header at all when Contains is empty.
type DenyRule struct {
	Header   string `json:"header"`
	Contains string `json:"contains"`
}

// Policy is a checked, normalised Config: header names lower case, deny substrings lower case.
type Policy struct {
	require       []string
	deny          []DenyRule
	maxValueBytes int
	stripRequest  []string
	stripResponse []string
	setResponse   []sluice.Header
}

// NewPolicy checks a config: header names must be valid HTTP field names.
func NewPolicy(config Config) (*Policy, error) {
	policy := &Policy{maxValueBytes: config.MaxValueBytes}
	if config.MaxValueBytes < 0 {
		return nil, errors.New("max_value_bytes must not be negative")
	}
	names := func(key string, list []string) ([]string, error) {
		out := make([]string, 0, len(list))
		for _, name := range list {
			if !validName(name) {
				return nil, errors.New(key + ": " + strconv.Quote(name) + " is not a valid header name")
			}
			out = append(out, strings.ToLower(name))
		}
		return out, nil
	}
	var err error
	if policy.require, err = names("require", config.Require); err != nil {
		return nil, err
	}
	if policy.stripRequest, err = names("strip_request", config.StripRequest); err != nil {
		return nil, err
	}
	if policy.stripResponse, err = names("strip_response", config.StripResponse); err != nil {
		return nil, err
	}
	for i, rule := range config.Deny {
		if !validName(rule.Header) {
			return nil, errors.New("deny[" + strconv.Itoa(i) + "].header: " + strconv.Quote(rule.Header) + " is not a valid header name")
		}
		policy.deny = append(policy.deny, DenyRule{Header: strings.ToLower(rule.Header), Contains: strings.ToLower(rule.Contains)})
	}
	for name, value := range config.SetResponse {
		if !validName(name) {
			return nil, errors.New("set_response: " + strconv.Quote(name) + " is not a valid header name")
		}
		policy.setResponse = append(policy.setResponse, sluice.Header{Name: strings.ToLower(name), Value: []byte(value)})
	}
	return policy, nil
}

// Verdict is what the policy says about a request's headers: Status 0 lets it through.
type Verdict struct {
	Status int
	Reason string
}

// Check applies the request rules to a request's headers (names lower case, as the host gives
// them).
func (p *Policy) Check(headers []sluice.Header) Verdict {
	for _, header := range headers {
		if p.maxValueBytes > 0 && len(header.Value) > p.maxValueBytes {
			return Verdict{431, "header " + header.Name + " is longer than " + strconv.Itoa(p.maxValueBytes) + " bytes"}
		}
	}
	for _, name := range p.require {
		if !has(headers, name) {
			return Verdict{400, "missing required header " + name}
		}
	}
	for _, rule := range p.deny {
		for _, header := range headers {
			if header.Name != rule.Header {
				continue
			}
			if rule.Contains == "" || strings.Contains(strings.ToLower(string(header.Value)), rule.Contains) {
				return Verdict{403, "header " + header.Name + " is not allowed here"}
			}
		}
	}
	return Verdict{}
}

func has(headers []sluice.Header, name string) bool {
	for _, header := range headers {
		if header.Name == name {
			return true
		}
	}
	return false
}

// validName reports whether name is an HTTP field name (RFC 9110 token).
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
