#!/usr/bin/python3
"""A saga participant written against docs/protocol.md only, with Python pika (no sagahost code).

    pika_participant.py SERVICE [AMQP_URL]

Consumes saga.svc.SERVICE and answers these commands:
  Echo    -> ok, {"echo": <payload>, "by": "pika", "n": <how many distinct commands so far>}
  Reject  -> error, {"error": "rejected: <payload.reason>", "retryable": false}
  Undo    -> ok, {"undone": <payload>}
anything else is rejected (basic.reject, requeue=false) to saga.svc.SERVICE.dlq.

Tracing (W3C Trace Context, docs/protocol.md): a command with a `traceparent` header is handled in a span
of its own, a child of that header's span: its traceparent goes back in the reply's `traceparent` header,
an Echo result also carries {"traceparent_in": <the header received>, "traceparent": <its own>}, and with
OTEL_EXPORTER_OTLP_ENDPOINT set the span is sent there as OTLP/HTTP JSON (POST <endpoint>/v1/traces).

Every command whose effect is applied prints "HANDLED <message_id> <type>"; a re-sent command
(same message_id) prints "DUPLICATE <message_id>" and gets the same reply again without a second effect.
"""
import json
import os
import sys
import time
import urllib.request

import pika

SERVICE = sys.argv[1]
URL = sys.argv[2] if len(sys.argv) > 2 else "amqp://guest:guest@127.0.0.1:5672/%2F"
if "heartbeat=" not in URL:
    URL += ("&" if "?" in URL else "?") + "heartbeat=10"

params = pika.URLParameters(URL)
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.confirm_delivery()
ch.basic_qos(prefetch_count=32)

ch.exchange_declare("saga.commands", "topic", durable=True)
ch.exchange_declare("saga.dlx", "direct", durable=True)
q, dlq = f"saga.svc.{SERVICE}", f"saga.svc.{SERVICE}.dlq"
ch.queue_declare(dlq, durable=True)
ch.queue_bind(dlq, "saga.dlx", routing_key=dlq)
ch.queue_declare(q, durable=True, arguments={
    "x-dead-letter-exchange": "saga.dlx", "x-dead-letter-routing-key": dlq})
ch.queue_bind(q, "saga.commands", routing_key=f"{SERVICE}.#")

done = {}  # message_id -> (status, result)


def echo(payload):
    return {"echo": payload, "by": "pika", "n": len(done) + 1}


def reject(payload):
    raise ValueError("rejected: " + str(payload.get("reason", "no reason")))


def undo(payload):
    return {"undone": payload}


HANDLERS = {"Echo": echo, "Reject": reject, "Undo": undo}
OTLP = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def continue_trace(props):
    """the (trace id, parent span id, our span id) of a command carrying a valid traceparent, else None"""
    tp = (props.headers or {}).get("traceparent")
    if isinstance(tp, bytes):
        tp = tp.decode()
    parts = tp.split("-") if isinstance(tp, str) else []
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    return parts[1], parts[2], os.urandom(8).hex()


def export_span(trace, props, start_ns, status):
    trace_id, parent, span = trace
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "pika-" + SERVICE}}]},
        "scopeSpans": [{"scope": {"name": "pika_participant"}, "spans": [{
            "traceId": trace_id, "spanId": span, "parentSpanId": parent, "kind": 2,
            "name": "process " + SERVICE + "." + str(props.type),
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(time.time_ns()),
            "attributes": [
                {"key": "messaging.system", "value": {"stringValue": "rabbitmq"}},
                {"key": "messaging.operation", "value": {"stringValue": "process"}},
                {"key": "messaging.destination.name", "value": {"stringValue": "saga.commands"}},
                {"key": "messaging.message.id", "value": {"stringValue": props.message_id}}],
            "status": {"code": 0 if status == "ok" else 2}}]}]}]}
    req = urllib.request.Request(OTLP.rstrip("/") + "/v1/traces", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except Exception as e:  # tracing is best effort
        print("OTLP export failed:", e, flush=True)


def on_command(ch, method, props, body):
    mid = props.message_id
    if not mid:
        ch.basic_reject(method.delivery_tag, requeue=False)
        return
    start_ns = time.time_ns()
    trace = continue_trace(props)
    if mid in done:
        status, result = done[mid]
        print("DUPLICATE", mid, flush=True)
    else:
        handler = HANDLERS.get(props.type)
        if handler is None:
            print("UNKNOWN", mid, props.type, flush=True)
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        try:
            status, result = "ok", handler(json.loads(body))
            if trace and props.type == "Echo":
                result["traceparent_in"] = props.headers["traceparent"]
                result["traceparent"] = f"00-{trace[0]}-{trace[2]}-01"
        except Exception as e:  # the contract: an error reply, not retryable
            status, result = "error", {"error": str(e), "retryable": False}
        done[mid] = (status, result)
        print("HANDLED", mid, props.type, flush=True)
        if trace and OTLP:
            export_span(trace, props, start_ns, status)
    headers = {"saga-status": status}
    if trace:
        headers["traceparent"] = f"00-{trace[0]}-{trace[2]}-01"
    if props.reply_to:
        ch.basic_publish(
            exchange="", routing_key=props.reply_to, body=json.dumps(result),
            properties=pika.BasicProperties(
                content_type="application/json", delivery_mode=2,
                correlation_id=mid, headers=headers))
    ch.basic_ack(method.delivery_tag)


ch.basic_consume(q, on_command)
print("READY", SERVICE, flush=True)
try:
    ch.start_consuming()
except KeyboardInterrupt:
    pass
