// Types of the CommonJS build (`require('street-client')`): the same client as the ES
// module's (street.d.mts), exported as the module itself.
import type * as M from './street.mjs';

declare const Street: typeof M.Street & {
  Street: typeof M.Street;
  StreetAckError: typeof M.StreetAckError;
  default: typeof M.Street;
};
// the types too, under the same name: `import Street = require('street-client')`, then
// `Street.Street<In>`, `Street.StreetOptions`, …
declare namespace Street {
  type Street<
    In extends M.EventMap = M.EventMap,
    Out extends M.EventMap = M.EventMap,
    Requests extends M.RequestMap = M.RequestMap,
    ServerRequests extends M.RequestMap = M.RequestMap,
  > = M.Street<In, Out, Requests, ServerRequests>;
  type StreetOptions = M.StreetOptions;
  type StreetAckError = M.StreetAckError;
  type Envelope<T extends string = string, P = unknown> = M.Envelope<T, P>;
  type EventMap = M.EventMap;
  type RequestMap = M.RequestMap;
  type State = M.State;
  type Lifecycle = M.Lifecycle;
  type Position = M.Position;
  type Recent<In extends M.EventMap = M.EventMap> = M.Recent<In>;
}
export = Street;
