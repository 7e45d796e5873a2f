#!/usr/bin/python3
"""A saga participant over AMQP 1.0, written against docs/protocol.md ("AMQP 1.0 (Azure Service Bus)")
only, with python-qpid-proton (Debian python3-qpid-proton; no sagahost code).

    participant.py URL PREFIX STATE_FILE SERVICE...

URL is amqp://user:pass@host:port; PREFIX the queue address prefix ("/amq/queue/" on RabbitMQ 3.x,
"" on Azure Service Bus). Consumes PREFIX + "saga.svc.<SERVICE>" for each SERVICE and answers the
OrderProcessing commands by their subject:
  Reserve        -> ok, {"reservation_id": "r-<order_id>-<sku>", "sku", "qty"}
  Release        -> ok, {"released": <reservation_id>}
  Charge         -> ok, {"payment_id": "p-<order_id>", "amount"}; card "declined": error, retryable false
  Refund         -> ok, {"refunded": <payment_id>, "amount"}
  CreateShipment -> ok, {"tracking": "t-<order_id>"}
anything else is rejected (the broker dead-letters it).

Idempotent across crashes: the reply to every message-id is appended to STATE_FILE (fsync'd) before it
is sent, and a command is accepted only once the broker accepted its reply. "HANDLED <message-id>
<subject>" is printed when an effect is applied (once per message-id over every run); a command seen
again gets the recorded reply and prints "DUPLICATE <message-id> <subject>".

CRASH_AFTER=N (environment): exit at once (os._exit) right after recording the Nth effect of this run,
before its reply is sent: the command is redelivered to the next run.
The connection is retried every second when it fails (a broker restart).
"""
import json
import os
import sys
import time

from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

URL, PREFIX, STATE = sys.argv[1], sys.argv[2], sys.argv[3]
SERVICES = sys.argv[4:]
CRASH_AFTER = int(os.environ.get("CRASH_AFTER", "0"))

done = {}  # message-id -> [status, result]
if os.path.exists(STATE):
    with open(STATE) as f:
        for line in f:
            if line.strip():
                mid, status, result = json.loads(line)
                done[mid] = [status, result]
state = open(STATE, "a")
applied = 0


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
    "Reserve": lambda p: {"reservation_id": "r-%s-%s" % (p["order_id"], p["sku"]), "sku": p["sku"], "qty": p["qty"]},
    "Release": lambda p: {"released": p.get("reservation_id")},
    "Charge": charge,
    "Refund": lambda p: {"refunded": p.get("payment_id"), "amount": p.get("amount")},
    "CreateShipment": lambda p: {"tracking": "t-%s" % p["order_id"]},
}


def text(body):
    return body.decode() if isinstance(body, (bytes, memoryview)) else body


class Participant(MessagingHandler):
    def __init__(self):
        super().__init__(prefetch=32, auto_accept=False)
        self.senders = {}   # reply address -> sender
        self.waiting = {}   # reply delivery -> command delivery
        self.ready = 0

    def on_start(self, event):
        self.conn = event.container.connect(URL, reconnect=False, allowed_mechs="PLAIN", heartbeat=10)
        for svc in SERVICES:
            event.container.create_receiver(self.conn, PREFIX + "saga.svc." + svc)

    def on_link_opened(self, event):
        if event.receiver:
            self.ready += 1
            if self.ready == len(SERVICES):
                print("READY", flush=True)

    def on_message(self, event):
        global applied
        msg, dlv = event.message, event.delivery
        mid, command = str(msg.id), msg.subject
        if command not in HANDLERS:
            print("REJECTED %s %s" % (mid, command), flush=True)
            self.reject(dlv)  # dead-lettered by the broker
            return
        if mid in done:
            print("DUPLICATE %s %s" % (mid, command), flush=True)
            status, result = done[mid]
        else:
            try:
                status, result = "ok", HANDLERS[command](json.loads(text(msg.body)))
            except Failed as e:
                status, result = "error", {"error": str(e), "retryable": e.retryable}
            # the record, then the line that tells the effect, then the fsync: a kill -9 (most likely
            # during the fsync) leaves both or neither
            state.write(json.dumps([mid, status, result]) + "\n")
            state.flush()
            print("HANDLED %s %s" % (mid, command), flush=True)
            os.fsync(state.fileno())
            done[mid] = [status, result]
            applied += 1
            if CRASH_AFTER and applied >= CRASH_AFTER:
                print("CRASHING", flush=True)
                os._exit(9)
        if not msg.reply_to:  # fire and forget
            self.accept(dlv)
            return
        sender = self.senders.get(msg.reply_to)
        if sender is None:
            sender = self.senders[msg.reply_to] = event.container.create_sender(self.conn, msg.reply_to)
        reply = Message(id="reply-" + mid, correlation_id=mid, durable=True, content_type="application/json",
                        properties={"saga-status": status}, body=json.dumps(result).encode(), inferred=True)
        self.waiting[sender.send(reply)] = dlv

    def on_accepted(self, event):  # our reply is with the broker: now the command may go
        cmd = self.waiting.pop(event.delivery, None)
        if cmd is not None:
            self.accept(cmd)

    def on_rejected(self, event):
        cmd = self.waiting.pop(event.delivery, None)
        if cmd is not None:
            self.release(cmd)  # comes back; the recorded reply is sent again

    on_released = on_rejected

    def fail(self, event, what):
        print("DISCONNECTED %s" % what, flush=True)
        event.container.stop()

    def on_transport_error(self, event):
        self.fail(event, "transport")

    def on_connection_error(self, event):
        self.fail(event, "connection")

    def on_link_error(self, event):
        self.fail(event, "link %s" % event.link.remote_condition)

    def on_session_error(self, event):
        self.fail(event, "session %s" % event.session.remote_condition)

    def on_disconnected(self, event):
        self.fail(event, "disconnected")


while True:
    try:
        Container(Participant()).run()
    except Exception as e:  # noqa: BLE001 (a broker going away mid-call)
        print("ERROR %s" % e, flush=True)
    time.sleep(1)
