// A gRPC client of sagahost.v1.Sagas for tests/spec/grpc_spec.lua (@grpc/grpc-js, @grpc/proto-loader).
//   node client.js ADDR METHOD 'REQUEST-JSON' [OPTIONS-JSON]
// OPTIONS: token (sent as `authorization: Bearer ...`), count (streams: stop after this many events),
// timeout_ms (a deadline, default 20000), ca (a PEM file: connect over TLS trusting it; else plaintext),
// traceparent (sent as that metadata).
// Prints one JSON line: {"ok": true, "response": ...} for a unary call, {"ok": true, "events": [...]}
// for a stream that ended or gave `count` events; on an error {"ok": false, "code": N, "name": "NOT_FOUND",
// "details": "...", "events": [...]}.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [addr, method, reqJson, optJson] = process.argv.slice(2);
const opts = optJson ? JSON.parse(optJson) : {};
const def = loader.loadSync(path.join(__dirname, "../../proto/sagahost/v1/sagas.proto"),
  { keepCase: true, longs: Number, defaults: true });
const Sagas = grpc.loadPackageDefinition(def).sagahost.v1.Sagas;
const fs = require("fs");
const creds = opts.ca ? grpc.credentials.createSsl(fs.readFileSync(opts.ca)) : grpc.credentials.createInsecure();
const client = new Sagas(addr, creds);
const md = new grpc.Metadata();
if (opts.token) md.set("authorization", "Bearer " + opts.token);
if (opts.traceparent) md.set("traceparent", opts.traceparent);
const deadline = new Date(Date.now() + (opts.timeout_ms || 20000));
const request = JSON.parse(reqJson || "{}");
const names = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));
let done = false;
function out(o) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(o) + "\n");
  client.close();
  setImmediate(() => process.exit(0));
}
function fail(err, events) {
  out({ ok: false, code: err.code, name: names[err.code], details: err.details, events });
}

if (method === "Watch" || method === "WatchAll") {
  const events = [];
  const call = client[method](request, md, { deadline });
  call.on("data", (ev) => {
    events.push(ev);
    if (opts.count && events.length >= opts.count) { out({ ok: true, events }); call.cancel(); }
  });
  call.on("error", (err) => fail(err, events));
  call.on("end", () => out({ ok: true, events, ended: true }));
} else {
  client[method](request, md, { deadline }, (err, response) => {
    if (err) fail(err);
    else out({ ok: true, response });
  });
}
