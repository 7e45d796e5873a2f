#!/usr/bin/python3
"""Small broker chores for the specs, with Python pika.

    amqp_tool.py URL delete QUEUE...            delete queues (missing ones are fine)
    amqp_tool.py URL count QUEUE                print the number of ready messages (-1 if no queue)
    amqp_tool.py URL declare QUEUE...           declare durable queues (existing ones are fine)
    amqp_tool.py URL publish QUEUE JSON_SPEC    publish through the default exchange; JSON_SPEC:
        {"body": "...", "correlation_id": "...", "message_id": "...", "reply_to": "...", "type": "...",
         "headers": {...}, "body_size": N}  (body_size: a JSON string body of N bytes instead of body;
         "exchange": "x" publishes through exchange x with QUEUE as the routing key instead)
    amqp_tool.py URL get QUEUE [SECONDS]        wait for one message, ack it, print it as JSON:
        {"body": ..., "correlation_id": ..., "message_id": ..., "headers": {...}} or null; a message RabbitMQ
        dead-lettered also has "death": {"reason": ..., "queue": ...} (its x-death header's latest entry)
"""
import json
import sys
import time

import pika

url, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()


def text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


if cmd == "declare":
    for q in args:
        ch.queue_declare(q, durable=True)
elif cmd == "delete":
    for q in args:
        ch.queue_delete(q)
elif cmd == "count":
    try:
        r = ch.queue_declare(args[0], passive=True)
        print(r.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        print(-1)
elif cmd == "publish":
    spec = json.loads(args[1])
    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="application/json", delivery_mode=2,
        correlation_id=spec.get("correlation_id"), message_id=spec.get("message_id"),
        reply_to=spec.get("reply_to"), type=spec.get("type"), headers=spec.get("headers"))
    n = spec.get("body_size")
    body = (b'"' + b"x" * (n - 2) + b'"') if n else spec.get("body", "").encode()
    ch.basic_publish(spec.get("exchange", ""), args[0], body, props, mandatory=True)
elif cmd == "get":
    deadline = time.time() + (float(args[1]) if len(args) > 1 else 0)
    out = None
    while True:
        method, props, body = ch.basic_get(args[0], auto_ack=False)
        if method:
            out = {"body": text(body), "correlation_id": props.correlation_id, "message_id": props.message_id,
                   "headers": {k: text(v) for k, v in (props.headers or {}).items() if k != "x-death"}}
            deaths = (props.headers or {}).get("x-death") or []
            if deaths:  # RabbitMQ's record of the last dead-lettering: why (rejected, expired...) and from where
                out["death"] = {"reason": text(deaths[0].get("reason")), "queue": text(deaths[0].get("queue"))}
            ch.basic_ack(method.delivery_tag)
            break
        if time.time() >= deadline:
            break
        time.sleep(0.1)
    print(json.dumps(out))
else:
    sys.exit("unknown command " + cmd)
conn.close()
