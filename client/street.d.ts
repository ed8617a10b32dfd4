// Types of the CommonJS build (`require('street-client')`): the same client as the ES
// module's (street.d.mts), exported as the module itself.
import type * as M from './street.mjs';

declare const Street: typeof M.Street & {
  Street: typeof M.Street;
  StreetAckError: typeof M.StreetAckError;
  default: typeof M.Street;
};
export = Street;
