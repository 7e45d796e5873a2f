// A saga participant over AMQP 1.0 with rhea (npm; a JavaScript AMQP 1.0 implementation, nothing of Qpid
// Proton), written against docs/protocol.md ("AMQP 1.0 (Azure Service Bus)") only.
//
//   node participant.js URL PREFIX STATE_FILE SERVICE...
//
// The same participant as participant.py (same commands and results, same STATE_FILE format, same
// "HANDLED <message-id> <subject>", "DUPLICATE <message-id>", "READY" lines), except that it replies
// with rhea's default body: an amqp-value holding the JSON text as a string. Its connection is rhea's,
// reconnecting by itself.
'use strict';
const fs = require('fs');
const rhea = require('rhea');

const [url, prefix, stateFile, ...services] = process.argv.slice(2);
const u = new URL(url);

const done = new Map(); // message-id -> [status, result]
if (fs.existsSync(stateFile)) {
  for (const line of fs.readFileSync(stateFile, 'utf8').split('\n')) {
    if (line.trim()) { const [mid, status, result] = JSON.parse(line); done.set(mid, [status, result]); }
  }
}
const state = fs.openSync(stateFile, 'a');

class Failed extends Error {
  constructor(message, retryable) { super(message); this.retryable = retryable; }
}
const handlers = {
  Reserve: (p) => ({ reservation_id: `r-${p.order_id}-${p.sku}`, sku: p.sku, qty: p.qty }),
  Release: (p) => ({ released: p.reservation_id }),
  Charge: (p) => {
    if (p.card === 'declined') throw new Failed('card declined', false);
    return { payment_id: `p-${p.order_id}`, amount: p.amount };
  },
  Refund: (p) => ({ refunded: p.payment_id, amount: p.amount }),
  CreateShipment: (p) => ({ tracking: `t-${p.order_id}` }),
};

// the body: one data section (what the host sends), or an amqp-value string
function text(body) {
  if (typeof body === 'string') return body;
  if (Buffer.isBuffer(body)) return body.toString('utf8');
  if (body && body.content !== undefined) return Buffer.from(body.content).toString('utf8');
  return JSON.stringify(body);
}

const container = rhea.create_container({ id: `rhea-participant-${process.pid}` });
const conn = container.connect({ host: u.hostname, port: Number(u.port || 5672),
  username: decodeURIComponent(u.username), password: decodeURIComponent(u.password), idle_time_out: 20000 });
const senders = new Map(); // reply address -> sender
const waiting = new Map(); // reply delivery -> command delivery
let opened = 0;

for (const svc of services) conn.open_receiver({ source: prefix + 'saga.svc.' + svc, autoaccept: false, credit_window: 32 });

container.on('receiver_open', () => { if (++opened === services.length) console.log('READY'); });

container.on('message', (ctx) => {
  const msg = ctx.message;
  const mid = String(msg.message_id);
  const command = msg.subject;
  if (!handlers[command]) {
    console.log(`REJECTED ${mid} ${command}`);
    ctx.delivery.reject({ condition: 'amqp:not-implemented', description: `no handler for ${command}` });
    return;
  }
  let entry = done.get(mid);
  if (entry) {
    console.log(`DUPLICATE ${mid}`);
  } else {
    try {
      entry = ['ok', handlers[command](JSON.parse(text(msg.body)))];
    } catch (e) {
      entry = ['error', { error: e.message, retryable: e instanceof Failed ? e.retryable : false }];
    }
    fs.writeSync(state, JSON.stringify([mid, entry[0], entry[1]]) + '\n');
    fs.fsyncSync(state);
    done.set(mid, entry);
    console.log(`HANDLED ${mid} ${command}`);
  }
  if (!msg.reply_to) { ctx.delivery.accept(); return; }
  let sender = senders.get(msg.reply_to);
  if (!sender) { sender = conn.open_sender(msg.reply_to); senders.set(msg.reply_to, sender); }
  const d = sender.send({ correlation_id: mid, durable: true, content_type: 'application/json',
    application_properties: { 'saga-status': entry[0] }, body: JSON.stringify(entry[1]) });
  waiting.set(d, ctx.delivery);
});

container.on('accepted', (ctx) => { // the reply is with the broker: the command may go
  const cmd = waiting.get(ctx.delivery);
  if (cmd) { waiting.delete(ctx.delivery); cmd.accept(); }
});
container.on('rejected', (ctx) => {
  const cmd = waiting.get(ctx.delivery);
  if (cmd) { waiting.delete(ctx.delivery); cmd.release(); }
});
container.on('disconnected', (ctx) => {
  console.log(`DISCONNECTED ${ctx.error ? ctx.error.message || ctx.error : ''}`);
  waiting.clear(); // those commands come back from the broker
});
container.on('error', (e) => console.log(`ERROR ${e.message || e}`));
