// filter-template: a Sluice filter.
//
// Config: { required_header = "x-api-version", response_header = "filter-template" }
package main

import "sluice.dev/sluice"

// Config is the route's config for this filter.
type Config struct {
	// Requests without this header are refused.
	RequiredHeader string `json:"required_header"`
	// Added to every response.
	ResponseHeader string `json:"response_header"`
}

// FilterTemplate is the filter; one per instance, made from the route's config.
type FilterTemplate struct {
	config Config
}

func (f *FilterTemplate) OnRequest(req *sluice.Request) sluice.Decision {
	if f.config.RequiredHeader != "" {
		if _, present := req.Header(f.config.RequiredHeader); !present {
			return sluice.Respond(sluice.NewResponse(400).WithText("missing header " + f.config.RequiredHeader + "\n"))
		}
	}
	return sluice.Continue()
}

func (f *FilterTemplate) OnResponse(req *sluice.Request, resp *sluice.Response) sluice.Decision {
	_ = resp.SetHeader("x-filtered-by", f.config.ResponseHeader)
	return sluice.Continue()
}

func init() {
	sluice.Register(func(config Config) (any, error) {
		if config.ResponseHeader == "" {
			config.ResponseHeader = "filter-template"
		}
		return &FilterTemplate{config: config}, nil
	})
}

// main is not called: the host calls the filter's phases.
func main() {}
