// Compiled (never run) by tests/it/street_js.rs with `tsc -p tests/js/types`: the client's
// types accept what they should, and every `@ts-expect-error` line must be an error.
import Street, { StreetAckError, type Envelope } from 'street-client';

type In = { chat: { text: string; from: string }; tick: number };
type Out = { chat: { text: string } };
type Req = { sum: [[number, number], number] };
type SrvReq = { confirm: [string, boolean] };

const s = new Street<In, Out, Req, SrvReq>('ws://localhost:3000/ws', { ackTimeoutMs: 5000 });
s.on('chat', (p, env: Envelope<'chat', In['chat']>) => {
  const t: string = p.text + p.from + env.type;
  void t;
});
s.on('tick', (n) => n.toFixed(0));
s.emit('chat', { text: 'hi' });
const total: Promise<number> = s.emitWithAck('sum', [1, 2], { timeout: 100 });
void total;
s.onRequest('confirm', (q) => q.length > 0);
s.onRequest('confirm', async () => true);
s.onLifecycle('state', (i) => i.state === 'open');
s.onLifecycle('close', (i) => i.code + i.reason.length);
const e = StreetAckError('timeout');
const code: string = e.code;
void code;

// @ts-expect-error: not an event the server sends
s.on('nope', () => {});
// @ts-expect-error: the payload's type is wrong
s.emit('chat', { text: 1 });
// @ts-expect-error: not a request
s.emitWithAck('chat', { text: 'x' });
// @ts-expect-error: the request's payload is [number, number]
s.emitWithAck('sum', ['1', 2]);
// @ts-expect-error: the answer must be a boolean
s.onRequest('confirm', () => 'yes');
// @ts-expect-error: not a lifecycle event
s.onLifecycle('message', () => {});

// the CommonJS build's types are the same client's
import Cjs = require('street-client');
const c = new Cjs.Street<In>('ws://x');
c.on('tick', (n) => n.toFixed(0));
// …and it names them: the client, its options, its errors
const typed: Cjs.Street<In> = c;
const options: Cjs.StreetOptions = { tokenTimeoutMs: 100 };
const failure: Cjs.StreetAckError = Cjs.StreetAckError('closed');
void [typed, options, failure];
s.history('chat:general', { limit: 20 }).then((h) => {
  const at: number = h.offset + h.publications.length;
  s.join(h.channel, { since: { epoch: h.epoch, offset: h.offset } });
  return at;
});
s.once('*', (type, _payload, env) => type.length + env.type.length);
// @ts-expect-error: not an event the server sends
c.on('nope', () => {});
