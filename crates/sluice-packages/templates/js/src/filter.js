// filter-template: a Sluice filter.
//
// Config: { required_header = "x-api-version", response_header = "filter-template" }

import { Decision, defineFilter } from '@sluice/filter-sdk';

class FilterTemplate {
  constructor(config) {
    // Requests without this header are refused.
    this.requiredHeader = config.required_header;
    // Added to every response.
    this.responseHeader = config.response_header ?? 'filter-template';
  }

  onRequest(request) {
    if (this.requiredHeader && request.header(this.requiredHeader) === undefined) {
      return Decision.respond(400, { body: `missing header ${this.requiredHeader}
` });
    }
    return Decision.continue();
  }

  onResponse(request, response) {
    response.setHeader('x-filtered-by', this.responseHeader);
    return Decision.continue();
  }
}

export const filter = defineFilter(FilterTemplate);
