package sluice

import (
	"errors"
	"strings"
	"testing"
)

type headOnly struct{ limit int }

func (headOnly) OnRequest(*Request) Decision { return Continue() }

type everything struct{ headOnly }

func (everything) OnRequestBody(*Request, []byte, bool) BodyAction             { return Pass() }
func (everything) OnResponse(*Request, *Response) Decision                     { return Continue() }
func (everything) OnResponseBody(*Request, *Response, []byte, bool) BodyAction { return Pass() }
func (everything) BufferResponseBody() bool                                    { return true }

type testConfig struct {
	Limit int    `json:"limit"`
	Name  string `json:"name"`
}

func TestConfigureDecodesTheConfigAndWorksOutPhases(t *testing.T) {
	var got testConfig
	Register(func(config testConfig) (any, error) {
		got = config
		if config.Limit < 0 {
			return nil, errors.New("limit must not be negative")
		}
		return headOnly{limit: config.Limit}, nil
	})
	phases, err := configure([]byte(`{"limit": 3, "name": "a"}`))
	if err != nil || phases != PhaseRequestHeaders || got != (testConfig{3, "a"}) {
		t.Fatalf("got %v %v %+v", phases, err, got)
	}
	if _, err := configure([]byte("null")); err != nil || got != (testConfig{}) {
		t.Fatalf("null config: %v %+v", err, got)
	}
	if _, err := configure([]byte(`{"limit": -1}`)); err == nil || err.Error() != "limit must not be negative" {
		t.Fatalf("refusal: %v", err)
	}
	_, err = configure([]byte(`{"limt": 3}`))
	if err == nil || !strings.Contains(err.Error(), `unknown field "limt"`) {
		t.Fatalf("a misspelt key: %v", err)
	}
	if _, err := configure([]byte(`{"limit": "three"}`)); err == nil || !strings.HasPrefix(err.Error(), "invalid config: ") {
		t.Fatalf("a wrong type: %v", err)
	}
}

func TestAFilterWithoutPhasesIsRefused(t *testing.T) {
	Register(func(struct{}) (any, error) { return struct{}{}, nil })
	if _, err := configure(nil); err == nil || !strings.Contains(err.Error(), "implements no phase") {
		t.Fatalf("got %v", err)
	}
}

func TestPhasesComeFromTheMethodsAFilterHas(t *testing.T) {
	all := PhaseRequestHeaders | PhaseRequestBody | PhaseResponseHeaders | PhaseResponseBody | PhaseBufferResponseBody
	if got := PhasesOf(everything{}); got != all {
		t.Fatalf("got %b, want %b", got, all)
	}
}

func TestDecisionsAndBodyActions(t *testing.T) {
	if Continue().Response() != nil {
		t.Fatal("continue carries no response")
	}
	response := NewResponse(403).WithHeader("x-a", "1").WithText("no\n")
	if Respond(response).Response() != response || string(response.Body) != "no\n" || len(response.Headers) != 2 {
		t.Fatalf("respond: %+v", response)
	}
	if bytes, ok := Replace([]byte("x")).Replacement(); !ok || string(bytes) != "x" {
		t.Fatal("replace")
	}
	if _, ok := Pass().Replacement(); ok {
		t.Fatal("pass is no replacement")
	}
}
