// A local OTLP/HTTP receiver for the tracing spec: `node receiver.mjs OUT_FILE`.
// Listens on 127.0.0.1 (a free port; prints "LISTENING <port>"), takes POST /v1/traces with
// Content-Type application/json (OTLP's JSON encoding), checks it is an ExportTraceServiceRequest and
// appends it to OUT_FILE as one line; answers 200 {} (the OTLP success answer). Anything else: 400/404.
import { createServer } from "node:http";
import { appendFileSync } from "node:fs";

const out = process.argv[2];
if (!out) { console.error("usage: node receiver.mjs OUT_FILE"); process.exit(2); }

const server = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/v1/traces") { res.writeHead(404).end(); return; }
  if (!(req.headers["content-type"] || "").startsWith("application/json")) {
    res.writeHead(415, { "Content-Type": "application/json" }).end('{"message":"JSON only"}');
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try { body = JSON.parse(Buffer.concat(chunks).toString("utf8")); } catch (e) { body = null; }
    if (!body || !Array.isArray(body.resourceSpans)) {
      res.writeHead(400, { "Content-Type": "application/json" }).end('{"message":"not an ExportTraceServiceRequest"}');
      return;
    }
    appendFileSync(out, JSON.stringify(body) + "\n");
    res.writeHead(200, { "Content-Type": "application/json" }).end("{}");
  });
});
server.listen(0, "127.0.0.1", () => console.log("LISTENING " + server.address().port));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
