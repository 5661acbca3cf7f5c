// Signs every response body with HMAC-SHA256 under a secret shared with clients, in a header
// (`x-signature: sha256=<hex>` by default), so a client can check that the body it got is the one
// the proxy sent. Config: `{ secret = "...", header = "x-signature" }`.

import { BodyAction, defineFilter, toBytes } from '@sluice/filter-sdk';
import { log } from 'sluice:filter/log@0.1.3';
import { addEvent, setAttribute } from 'sluice:filter/trace@0.1.3';
import { hex, hmacSha256 } from './hmac.js';

class Sign {
  // The whole body in one call, while the response head can still change.
  static bufferResponseBody = true;

  constructor(config) {
    if (typeof config.secret !== 'string' || config.secret.length < 16) {
      throw new Error('config.secret must be a string of at least 16 characters');
    }
    this.key = toBytes(config.secret);
    this.header = config.header ?? 'x-signature';
    log('debug', `signing responses in ${this.header}`);
  }

  onResponseBody(request, response, body) {
    response.setHeader(this.header, `sha256=${hex(hmacSha256(this.key, body))}`);
    // In the request's trace (when it is traced): what was signed, on this call's span.
    setAttribute('sign.header', this.header);
    addEvent('signed', [['bytes', String(body.length)]]);
    response.setHeader('x-signed-by', 'sluice-js');
    return BodyAction.pass();
  }
}

export const filter = defineFilter(Sign);
