#!/usr/bin/python3
"""The OrderProcessing participants over AMQP 0-9-1, written against docs/protocol.md only, with Python
pika (no sagahost code).

    pika_orders.py AMQP_URL STATE_FILE SERVICE...

AMQP_URL is pika's form (vhost "/" as %2F). For each SERVICE (inventory, payment or shipping, optionally
with a suffix: inventory_ab12) it declares the topology of docs/protocol.md ("Topology": saga.commands,
saga.dlx, saga.svc.SERVICE with its .dlq) and consumes saga.svc.SERVICE, answering by the `type` property:
  Reserve        -> ok, {"reservation_id": "r-<order_id>-<sku>", "sku", "qty"}
  Release        -> ok, {"released": <reservation_id>}
  Charge         -> ok, {"payment_id": "p-<order_id>", "amount"}; card "declined": error, retryable false
  Refund         -> ok, {"refunded": <payment_id>, "amount"}
  CreateShipment -> ok, {"tracking": "t-<order_id>"}
anything else (or a command without message_id, or a body that is not JSON) is rejected without requeue:
the queue's x-dead-letter-* arguments put it in saga.svc.SERVICE.dlq.

Idempotent across crashes ("Idempotency"): the reply to every message_id is appended to STATE_FILE
(fsync'd) before it is published; the reply is published with publisher confirms, and the command is acked
only after the broker confirmed it. "HANDLED <message_id> <service>.<command>" is printed when an effect
is applied (once per message_id over every run); a command seen again gets the recorded reply and prints
"DUPLICATE <message_id> <service>.<command>". The connection is made again every second when it fails (a broker restart).
Prints "READY" once it consumes every queue.
"""
import json
import os
import sys
import time

import pika

URL, STATE = sys.argv[1], sys.argv[2]
SERVICES = sys.argv[3:]
if "heartbeat=" not in URL:
    URL += ("&" if "?" in URL else "?") + "heartbeat=5"

done = {}  # message_id -> [status, result]
if os.path.exists(STATE):
    with open(STATE) as f:
        for line in f:
            if line.strip():
                mid, status, result = json.loads(line)
                done[mid] = [status, result]
state = open(STATE, "a")


class Failed(Exception):
    """a handler's error reply"""

    def __init__(self, message, retryable):
        super().__init__(message)
        self.retryable = retryable


def charge(p):
    if p.get("card") == "declined":
        raise Failed("card declined", False)
    return {"payment_id": "p-%s" % p["order_id"], "amount": p["amount"]}


HANDLERS = {
    "inventory": {
        "Reserve": lambda p: {"reservation_id": "r-%s-%s" % (p["order_id"], p["sku"]), "sku": p["sku"], "qty": p["qty"]},
        "Release": lambda p: {"released": p.get("reservation_id")},
    },
    "payment": {
        "Charge": charge,
        "Refund": lambda p: {"refunded": p.get("payment_id"), "amount": p.get("amount")},
    },
    "shipping": {
        "CreateShipment": lambda p: {"tracking": "t-%s" % p["order_id"]},
    },
}


def consumer(service):
    handlers = HANDLERS[service.split("_")[0]]

    def on_command(ch, method, props, body):
        mid, command = props.message_id, props.type
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not mid or command not in handlers or payload is None:
            print("REJECTED %s %s" % (mid, command), flush=True)
            ch.basic_reject(method.delivery_tag, requeue=False)  # -> saga.svc.SERVICE.dlq
            return
        if mid in done:
            print("DUPLICATE %s %s.%s" % (mid, service, command), flush=True)
            status, result = done[mid]
        else:
            try:
                status, result = "ok", handlers[command](payload)
            except Failed as e:
                status, result = "error", {"error": str(e), "retryable": e.retryable}
            # the record, then the line that tells the effect, then the fsync: a kill -9 (most likely
            # during the fsync) leaves both or neither
            state.write(json.dumps([mid, status, result]) + "\n")
            state.flush()
            print("HANDLED %s %s.%s" % (mid, service, command), flush=True)
            os.fsync(state.fileno())
            done[mid] = [status, result]
        if props.reply_to:
            # confirm mode: returns once the broker has the reply (raises if it refused it)
            ch.basic_publish(exchange="", routing_key=props.reply_to, body=json.dumps(result),
                             properties=pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                             correlation_id=mid, headers={"saga-status": status}))
        ch.basic_ack(method.delivery_tag)  # after the effect and the confirmed reply

    return on_command


def run():
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=32)
    ch.exchange_declare("saga.commands", "topic", durable=True)
    ch.exchange_declare("saga.dlx", "direct", durable=True)
    for svc in SERVICES:
        q, dlq = "saga.svc." + svc, "saga.svc." + svc + ".dlq"
        ch.queue_declare(dlq, durable=True)
        ch.queue_bind(dlq, "saga.dlx", routing_key=dlq)
        ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": "saga.dlx",
                                                     "x-dead-letter-routing-key": dlq})
        ch.queue_bind(q, "saga.commands", routing_key=svc + ".#")
        ch.basic_consume(q, consumer(svc))
    print("READY", flush=True)
    try:
        ch.start_consuming()
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 (already gone)
            pass


while True:
    try:
        run()
    except KeyboardInterrupt:
        break
    except Exception as e:  # noqa: BLE001 (a broker going away: connect again)
        print("DISCONNECTED %s" % (str(e) or type(e).__name__), flush=True)
    time.sleep(1)
