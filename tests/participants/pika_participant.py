#!/usr/bin/python3
"""A saga participant written against docs/protocol.md only, with Python pika (no sagahost code).

    pika_participant.py SERVICE [AMQP_URL]

Consumes saga.svc.SERVICE and answers these commands:
  Echo    -> ok, {"echo": <payload>, "by": "pika", "n": <how many distinct commands so far>}
  Reject  -> error, {"error": "rejected: <payload.reason>", "retryable": false}
  Undo    -> ok, {"undone": <payload>}
anything else is rejected (basic.reject, requeue=false) to saga.svc.SERVICE.dlq.

Every command whose effect is applied prints "HANDLED <message_id> <type>"; a re-sent command
(same message_id) prints "DUPLICATE <message_id>" and gets the same reply again without a second effect.
"""
import json
import sys

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


def on_command(ch, method, props, body):
    mid = props.message_id
    if not mid:
        ch.basic_reject(method.delivery_tag, requeue=False)
        return
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
        except Exception as e:  # the contract: an error reply, not retryable
            status, result = "error", {"error": str(e), "retryable": False}
        done[mid] = (status, result)
        print("HANDLED", mid, props.type, flush=True)
    if props.reply_to:
        ch.basic_publish(
            exchange="", routing_key=props.reply_to, body=json.dumps(result),
            properties=pika.BasicProperties(
                content_type="application/json", delivery_mode=2,
                correlation_id=mid, headers={"saga-status": status}))
    ch.basic_ack(method.delivery_tag)


ch.basic_consume(q, on_command)
print("READY", SERVICE, flush=True)
try:
    ch.start_consuming()
except KeyboardInterrupt:
    pass
