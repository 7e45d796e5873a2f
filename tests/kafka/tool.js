#!/usr/bin/env node
// Raw Kafka records for tests/spec/kafka_spec.lua, with kafkajs:
//   node tool.js produce BROKERS TOPIC KEY VALUE [HEADERS_JSON]   one record (headers: {"name": "value"})
//   node tool.js read BROKERS TOPIC COUNT [TIMEOUT_S]             the first COUNT records of TOPIC, from the
//        beginning, one JSON line each: {"key", "value", "headers": {...}, "partition", "offset"}; exits 1
//        when fewer came within TIMEOUT_S (default 20)
const { Kafka, logLevel } = require('kafkajs');

const [cmd, brokers, topic, a, b, c] = process.argv.slice(2);
const kafka = new Kafka({ clientId: 'spec-tool', brokers: brokers.split(','), logLevel: logLevel.NOTHING });

async function produce() {
  const p = kafka.producer();
  await p.connect();
  await p.send({ topic, acks: -1, messages: [{ key: a, value: b, headers: c ? JSON.parse(c) : {} }] });
  await p.disconnect();
}

async function read() {
  const want = Number(a), timeout = Number(b || 20);
  const consumer = kafka.consumer({ groupId: `spec-tool-${process.pid}-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let got = 0;
  const done = new Promise((resolve) => {
    consumer.run({ eachMessage: async ({ partition, message }) => {
      const headers = {};
      for (const [k, v] of Object.entries(message.headers || {})) headers[k] = v == null ? null : v.toString();
      console.log(JSON.stringify({ key: message.key && message.key.toString(), value: message.value.toString(),
        headers, partition, offset: message.offset }));
      if (++got >= want) resolve();
    } });
  });
  const timer = new Promise((resolve) => setTimeout(resolve, timeout * 1000));
  await Promise.race([done, timer]);
  await consumer.disconnect();
  process.exit(got >= want ? 0 : 1);
}

(cmd === 'produce' ? produce() : cmd === 'read' ? read() : Promise.reject(new Error('usage: tool.js produce|read ...')))
  .then(() => process.exit(0), (e) => { console.error(e); process.exit(2); });
