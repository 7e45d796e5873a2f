#!/usr/bin/python3
"""A minimal AMQP 1.0 peer (python-qpid-proton, listening) that plays the broker for one host, to see on
the wire what RabbitMQ does not keep: the error a host rejects a message with (Service Bus reads its
condition, description and info as DeadLetterReason / DeadLetterErrorDescription).

    fake_peer.py QUEUE_ADDRESS JSON_SPEC [DETACH_ADDRESS]

Listens on 127.0.0.1 (a free port: prints "LISTENING <port>"; SASL ANONYMOUS). Every receiver a client
attaches is answered; when one attaches QUEUE_ADDRESS, the peer sends it one message made from JSON_SPEC
({"body", "correlation_id", "id", "subject", "properties"}, the body as one data section) and prints the
outcome as one JSON line: {"outcome": "accepted" | "rejected" | "released" | "modified",
"condition": ..., "description": ..., "info": {...}}. Messages the client sends are accepted and dropped,
and each prints "RECEIVED <address> <message-id>"; except the first message sent to DETACH_ADDRESS:
it is left unsettled and its link is closed with amqp:link:detach-forced (as Service Bus detaches a link),
printing "DETACHED <address> <message-id>".
"""
import json
import sys

from proton import Condition, Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

ADDRESS, SPEC = sys.argv[1], json.loads(sys.argv[2])
DETACH = sys.argv[3] if len(sys.argv) > 3 else None


def plain(v):
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v if isinstance(v, (int, float, bool, type(None))) else str(v)


class Peer(MessagingHandler):
    def __init__(self):
        super().__init__(auto_accept=False)
        self.sent = False
        self.detached = False

    def on_start(self, event):
        acceptor = event.container.listen("127.0.0.1:0")
        print("LISTENING %d" % acceptor._selectable._delegate.getsockname()[1], flush=True)

    def on_connection_opening(self, event):
        event.connection.open()

    def on_session_opening(self, event):
        event.session.open()

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:  # the client receives: we are its source
            link.source.address = link.remote_source.address
        else:
            link.target.address = link.remote_target.address
            link.flow(100)
        link.open()

    def on_sendable(self, event):
        if self.sent or event.link.source.address != ADDRESS:
            return
        self.sent = True
        event.sender.send(Message(id=SPEC.get("id"), correlation_id=SPEC.get("correlation_id"),
                                  subject=SPEC.get("subject"), properties=SPEC.get("properties"),
                                  body=SPEC.get("body", "").encode(), inferred=True, durable=True))

    def on_message(self, event):
        address = event.link.target.address
        if address == DETACH and not self.detached:
            self.detached = True
            event.link.condition = Condition("amqp:link:detach-forced", "The link was detached by the peer")
            event.link.close()
            print("DETACHED %s %s" % (address, event.message.id), flush=True)
            return
        self.accept(event.delivery)
        print("RECEIVED %s %s" % (address, event.message.id), flush=True)

    def outcome(self, event, what):
        cond = event.delivery.remote.condition
        print(json.dumps({"outcome": what, "condition": cond and str(cond.name),
                          "description": cond and cond.description,
                          "info": cond and plain(cond.info or {})}), flush=True)

    def on_accepted(self, event):
        self.outcome(event, "accepted")

    def on_rejected(self, event):
        self.outcome(event, "rejected")

    def on_released(self, event):
        self.outcome(event, "modified" if event.delivery.remote_state == event.delivery.MODIFIED else "released")


Container(Peer()).run()
