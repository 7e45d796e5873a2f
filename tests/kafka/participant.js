#!/usr/bin/env node
// A saga participant written against docs/protocol.md ("Kafka") only, with kafkajs (no sagahost code).
//
//   node participant.js BROKERS SERVICE STATE_DIR [INSTANCE]
//
// SERVICE is inventory, payment or shipping, optionally with a suffix (inventory_ab12: the spec's own
// names); it consumes saga.svc.SERVICE in the consumer group saga.svc.SERVICE (every instance of the
// service shares the partitions) and answers the sample OrderProcessing commands like sagas/*.lua:
//   inventory: Reserve -> {reservation_id = "r-<order_id>-<sku>"}, Release
//   payment:   Charge  -> {payment_id = "p-<order_id>"} or, card "declined", error (not retryable), Refund
//   shipping:  CreateShipment -> {tracking = "t-<order_id>"}
// Any other command is dead-lettered to saga.svc.SERVICE.dlq with an x-saga-error header.
//
// Idempotency: the effect of a command is a file STATE_DIR/<message-id>.json made with O_EXCL holding the
// reply, shared by every instance: a command that comes again (after a rebalance, a crash before the
// commit) gets the stored reply, without a second effect. Offsets are committed only after the reply is
// acknowledged by the brokers.
//
// SESSION_TIMEOUT_MS (environment, default 10000): the consumer group session timeout.
//
// Prints "READY", "ASSIGNED <partitions>" on each assignment, "HANDLED <message-id> <service>.<command>"
// for each effect and "DUPLICATE <message-id> <service>.<command>" for a repeat (answered from the record).
const fs = require('fs');
const path = require('path');
const { Kafka, logLevel } = require('kafkajs');

const [brokers, SERVICE, STATE, INSTANCE = '1'] = process.argv.slice(2);
const BASE = SERVICE.split('_')[0];
const TOPIC = `saga.svc.${SERVICE}`;
// the group session: an instance that stops (kill -9) loses its partitions after it
const SESSION_TIMEOUT = Number(process.env.SESSION_TIMEOUT_MS || 10000);
fs.mkdirSync(STATE, { recursive: true });

const HANDLERS = {
  inventory: {
    Reserve: (p) => ({ reservation_id: `r-${p.order_id}-${p.sku}`, sku: p.sku, qty: p.qty }),
    Release: (p) => ({ released: p.reservation_id }),
  },
  payment: {
    Charge: (p) => {
      if (p.card === 'declined') throw Object.assign(new Error('card declined'), { retryable: false });
      return { payment_id: `p-${p.order_id}`, amount: p.amount };
    },
    Refund: (p) => ({ refunded: p.payment_id, amount: p.amount }),
  },
  shipping: {
    CreateShipment: (p) => ({ tracking: `t-${p.order_id}` }),
  },
}[BASE];

const kafka = new Kafka({
  clientId: `${SERVICE}-${INSTANCE}`, brokers: brokers.split(','), logLevel: logLevel.WARN,
  retry: { initialRetryTime: 100, retries: 50 },
});
const producer = kafka.producer();
let consumer;

const header = (m, name) => (m.headers && m.headers[name] != null ? m.headers[name].toString() : undefined);

// the effect, once per message id, across every instance; returns [status, result, duplicate]
function apply(mid, type, payload) {
  const file = path.join(STATE, encodeURIComponent(mid) + '.json');
  if (fs.existsSync(file)) {
    const { status, result } = JSON.parse(fs.readFileSync(file, 'utf8'));
    return [status, result, true];
  }
  let status = 'ok', result;
  try { result = HANDLERS[type](payload); }
  catch (e) { status = 'error'; result = { error: e.message, retryable: e.retryable !== false ? true : false }; }
  const tmp = file + '.' + process.pid;
  fs.writeFileSync(tmp, JSON.stringify({ status, result }));
  try { fs.linkSync(tmp, file); } catch (e) { // another instance made it first: its reply stands
    fs.unlinkSync(tmp);
    const { status: s2, result: r2 } = JSON.parse(fs.readFileSync(file, 'utf8'));
    return [s2, r2, true];
  }
  fs.unlinkSync(tmp);
  return [status, result, false];
}

async function handle({ topic, partition, message }) {
  const mid = header(message, 'message-id');
  const type = header(message, 'type');
  let payload;
  try { payload = JSON.parse(message.value.toString()); } catch (e) { payload = undefined; }
  if (!mid || !HANDLERS[type] || payload === undefined) {
    const why = !mid ? 'no message-id header' : payload === undefined ? 'body is not JSON' : `unknown command ${type}`;
    await producer.send({ topic: `${topic}.dlq`, acks: -1, messages: [{ key: message.key, value: message.value,
      headers: { ...message.headers, 'x-saga-error': why, 'x-saga-original-topic': topic } }] });
    console.log('DEAD', mid, why);
  } else {
    const [status, result, dup] = apply(mid, type, payload);
    console.log(`${dup ? 'DUPLICATE' : 'HANDLED'} ${mid} ${SERVICE}.${type}`);
    const replyTo = header(message, 'reply-to');
    if (replyTo) {
      const headers = { 'correlation-id': mid, 'saga-status': status, 'content-type': 'application/json' };
      const sagaId = header(message, 'saga-id');
      if (sagaId) headers['saga-id'] = sagaId;
      await producer.send({ topic: replyTo, acks: -1,
        messages: [{ key: message.key, value: JSON.stringify(result), headers }] });
    }
  }
  // after the effect and the reply: the next offset of this partition
  await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
}

// a consumer in the group; one that crashes for good (an error kafkajs does not retry itself) is
// replaced by a new one: what it had not committed comes again
async function consume() {
  const c = kafka.consumer({ groupId: TOPIC, sessionTimeout: SESSION_TIMEOUT, heartbeatInterval: 1000, maxWaitTimeInMs: 100 });
  consumer = c;
  c.on(c.events.GROUP_JOIN, (e) => console.log('ASSIGNED', JSON.stringify(e.payload.memberAssignment)));
  c.on(c.events.CRASH, (e) => {
    if (e.payload.restart) return;
    console.log('RESTART', e.payload.error && e.payload.error.message);
    c.disconnect().catch(() => {}).finally(() => setTimeout(() => consume().catch(fatal), 500));
  });
  await c.connect();
  await c.subscribe({ topic: TOPIC, fromBeginning: true });
  await c.run({ autoCommit: false, eachMessage: handle });
}

const fatal = (e) => { console.error('FATAL', e); process.exit(1); };

(async () => {
  await producer.connect();
  await consume();
  console.log('READY', SERVICE, INSTANCE);
})().catch(fatal);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, async () => {
    try { await consumer.disconnect(); await producer.disconnect(); } finally { process.exit(0); }
  });
}
