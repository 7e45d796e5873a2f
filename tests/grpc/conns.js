// Bare HTTP/2 connections to the gRPC port for tests/spec/grpc_spec.lua's limit tests (node's http2, no gRPC).
//   node conns.js ADDR OPTIONS-JSON
// OPTIONS: n (connections, opened one after another; default 1), hold_ms (how long to watch them after the
// last one opened; default 1000), raw (plain TCP sockets that send nothing), ca (a PEM file: TLS).
// Prints one JSON line: an array with, per connection, {goaway: {code, data}} if the server sent one and
// {closed_ms} (since it opened) if it closed within hold_ms.
"use strict";
const fs = require("fs");
const http2 = require("http2");
const net = require("net");

const [addr, optJson] = process.argv.slice(2);
const opts = optJson ? JSON.parse(optJson) : {};
const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
const results = [];
const handles = [];

function open(i) {
  return new Promise((resolve) => {
    const r = {};
    results[i] = r;
    const t0 = Date.now();
    const closed = () => { if (r.closed_ms === undefined) r.closed_ms = Date.now() - t0; resolve(); };
    if (opts.raw) {
      const s = net.connect(port, host, resolve);
      s.resume(); /* read (and drop) what comes, so that the server's close is seen */
      s.on("error", (e) => { r.error = e.code; });
      s.on("close", closed);
      handles.push(s);
      return;
    }
    const url = (opts.ca ? "https://" : "http://") + addr;
    const s = http2.connect(url, opts.ca ? { ca: fs.readFileSync(opts.ca) } : {});
    s.on("connect", () => resolve());
    s.on("goaway", (code, last, data) => { r.goaway = { code, data: data ? data.toString() : "" }; });
    s.on("error", (e) => { r.error = e.code; });
    s.on("close", closed);
    handles.push(s);
  });
}

(async () => {
  for (let i = 0; i < (opts.n || 1); i++) await open(i);
  setTimeout(() => {
    process.stdout.write(JSON.stringify(results) + "\n");
    for (const h of handles) h.destroy();
    process.exit(0);
  }, opts.hold_ms || 1000);
})();
