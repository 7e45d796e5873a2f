#!/usr/bin/python3
"""A minimal AMQP 1.0 peer (python-qpid-proton, listening) that plays the broker for one host, to see on
the wire what RabbitMQ does not keep: the error a host rejects a message with (Service Bus reads its
condition, description and info as DeadLetterReason / DeadLetterErrorDescription), and lock renewal.

    fake_peer.py QUEUE_ADDRESS JSON_SPEC [DETACH_ADDRESS]

Listens on 127.0.0.1 (a free port: prints "LISTENING <port>"; SASL ANONYMOUS). Every receiver a client
attaches is answered; when one attaches QUEUE_ADDRESS, the peer sends it the messages of JSON_SPEC and
prints each outcome as one JSON line: {"outcome": "accepted" | "rejected" | "released" | "modified",
"condition": ..., "description": ..., "info": {...}, "id": message-id, "token": lock token or null,
"lock_expired": true | false | null}. JSON_SPEC is one message ({"body", "correlation_id", "id",
"subject", "properties", "reply_to", "delivery_count"}, the body as one data section) or
{"messages": [message, ...]} with these keys too:

  "lock_ms": N    act like Service Bus in peek-lock mode: each delivery's tag is a lock token (a uuid
                  written in .NET Guid byte order, as Service Bus does) locked for N ms; prints
                  "DELIVERED <message-id> <token>". Requests to "<QUEUE_ADDRESS>/$management" with
                  operation com.microsoft:renew-lock are answered on the link whose target is their
                  reply-to: statusCode 200 and {"expirations": [...]} (each lock extended by N ms from
                  now), or 410 when a token's lock has already expired or is listed in "lose" (the whole
                  request fails, as on Service Bus); each prints "RENEW <json>" ({"tokens", "status",
                  "operation", "reply_to", "associated_link_name", "expired"}).
  "locked_until": false   leave out the x-opt-locked-until annotation and the expirations (default:
                  both sent, as Service Bus does).
  "lose": [i, ...] the locks of these messages (0-based) are lost: their renewals get 410.
  "refuse_management": true   links to "<QUEUE_ADDRESS>/$management" are refused (amqp:not-found), each
                  printing "REFUSED sender" or "REFUSED receiver" (the client's side).

Messages the client sends are accepted and dropped, and each prints "RECEIVED <address> <message-id>";
except the first message sent to DETACH_ADDRESS: it is left unsettled and its link is closed with
amqp:link:detach-forced (as Service Bus detaches a link), printing "DETACHED <address> <message-id>".
"""
import json
import random
import sys
import time
import uuid

from proton import UNDESCRIBED, Array, Condition, Data, Message, int32, symbol, timestamp
from proton.handlers import MessagingHandler
from proton.reactor import Container

ADDRESS, SPEC = sys.argv[1], json.loads(sys.argv[2])
DETACH = sys.argv[3] if len(sys.argv) > 3 else None
MESSAGES = SPEC.get("messages", [SPEC])
LOCK_MS = SPEC.get("lock_ms")
TIMES = SPEC.get("locked_until", True)
LOSE = set(SPEC.get("lose", []))
REFUSE_MGMT = SPEC.get("refuse_management", False)
MGMT = ADDRESS + "/$management"


def plain(v):
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v if isinstance(v, (int, float, bool, type(None))) else str(v)


def now_ms():
    return int(time.time() * 1000)


class Peer(MessagingHandler):
    def __init__(self):
        super().__init__(auto_accept=False)
        self.sent = False
        self.detached = False
        self.reply_links = {}   # target address -> our sender (the client's management receiver)
        self.locks = {}         # token -> {"until": ms, "lost": bool, "id": message-id}
        self.tokens = {}        # delivery tag -> token
        self.refused = set()    # links refused (refuse_management)

    def on_start(self, event):
        acceptor = event.container.listen("127.0.0.1:0")
        print("LISTENING %d" % acceptor._selectable._delegate.getsockname()[1], flush=True)

    def on_connection_opening(self, event):
        event.connection.open()

    def on_session_opening(self, event):
        event.session.open()

    def on_link_opening(self, event):
        link = event.link
        if REFUSE_MGMT and MGMT in (link.remote_source.address, link.remote_target.address):
            # as a broker refuses: the attach answered without a terminus, then (on_link_opened) a detach
            # with the reason
            self.refused.add(link)
            link.open()
            return
        if link.is_sender:  # the client receives: we are its source
            link.source.address = link.remote_source.address
            link.target.address = link.remote_target.address
            if link.remote_source.address == MGMT:
                self.reply_links[link.remote_target.address] = link
        else:
            link.target.address = link.remote_target.address
            link.flow(100)
        link.open()

    def on_link_opened(self, event):
        link = event.link
        if link in self.refused:
            link.condition = Condition("amqp:not-found", "The messaging entity '%s' could not be found." % MGMT)
            link.close()
            print("REFUSED %s" % ("receiver" if link.is_sender else "sender"), flush=True)

    def on_sendable(self, event):
        if self.sent or event.link.source.address != ADDRESS:
            return
        self.sent = True
        for i, spec in enumerate(MESSAGES):
            msg = Message(id=spec.get("id"), correlation_id=spec.get("correlation_id"), subject=spec.get("subject"),
                          properties=spec.get("properties"), reply_to=spec.get("reply_to"),
                          body=spec.get("body", "").encode(), inferred=True, durable=True)
            if spec.get("delivery_count"):
                msg.delivery_count = spec["delivery_count"]
            if LOCK_MS is None:
                event.sender.send(msg)
                continue
            # Proton's Python binding takes a tag as text: printable bytes (still random, so the byte order
            # of the token is tested)
            raw = bytes(random.choice(range(0x21, 0x7f)) for _ in range(16))
            token = uuid.UUID(bytes_le=raw)
            until = now_ms() + LOCK_MS
            if TIMES:
                msg.annotations = {symbol("x-opt-locked-until"): timestamp(until)}
            self.locks[str(token)] = {"until": until, "lost": i in LOSE, "id": spec.get("id")}
            tag = raw.decode("ascii")  # the token in .NET Guid byte order
            self.tokens[tag] = str(token)
            event.sender.send(msg, tag=tag)
            print("DELIVERED %s %s" % (spec.get("id"), token), flush=True)

    def renew(self, event):
        req = event.message
        props = req.properties or {}
        body = req.body if isinstance(req.body, dict) else {}
        arr = body.get("lock-tokens")
        tokens = [str(u) for u in (arr.elements if isinstance(arr, Array) else (arr or []))]
        status, expired = 200, False
        for tok in tokens:
            lock = self.locks.get(tok)
            if lock is None or lock["lost"] or now_ms() > lock["until"]:
                status = 410
                expired = expired or bool(lock and now_ms() > lock["until"])
        if status == 200:
            for tok in tokens:
                self.locks[tok]["until"] = now_ms() + LOCK_MS
        print("RENEW " + json.dumps({"tokens": tokens, "status": status, "operation": props.get("operation"),
                                     "reply_to": req.reply_to, "expired": expired,
                                     "associated_link_name": props.get("associated-link-name")}), flush=True)
        out = self.reply_links.get(req.reply_to)
        if out is None:
            print("NO-REPLY-LINK %s" % req.reply_to, flush=True)
            return
        if status == 200:
            exp = [timestamp(self.locks[t]["until"]) for t in tokens]
            resp = Message(correlation_id=req.id, properties={"statusCode": int32(200), "statusDescription": "OK"},
                           body={"expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *exp) if TIMES else
                                 Array(UNDESCRIBED, Data.TIMESTAMP)})
        else:
            resp = Message(correlation_id=req.id, properties={
                "statusCode": int32(410), "statusDescription": "The lock supplied is invalid. Either the lock "
                "expired, or the message has already been removed from the queue.",
                "errorCondition": symbol("com.microsoft:message-lock-lost")}, body={})
        out.send(resp)

    def on_message(self, event):
        if event.link in self.refused:
            return
        address = event.link.target.address
        if address == MGMT:
            self.renew(event)
            if not event.delivery.settled:
                self.accept(event.delivery)
            return
        if address == DETACH and not self.detached:
            self.detached = True
            event.link.condition = Condition("amqp:link:detach-forced", "The link was detached by the peer")
            event.link.close()
            print("DETACHED %s %s" % (address, event.message.id), flush=True)
            return
        self.accept(event.delivery)
        print("RECEIVED %s %s" % (address, event.message.id), flush=True)

    def outcome(self, event, what):
        if event.link.source.address == MGMT:  # the client took a renew-lock response
            return
        cond = event.delivery.remote.condition
        token = self.tokens.get(event.delivery.tag)
        lock = self.locks.get(token)
        print(json.dumps({"outcome": what, "condition": cond and str(cond.name),
                          "description": cond and cond.description,
                          "info": cond and plain(cond.info or {}),
                          "id": lock and lock["id"], "token": token, "lost": lock and lock["lost"],
                          "lock_expired": None if lock is None else now_ms() > lock["until"]}), flush=True)

    def on_accepted(self, event):
        self.outcome(event, "accepted")

    def on_rejected(self, event):
        self.outcome(event, "rejected")

    def on_released(self, event):
        self.outcome(event, "modified" if event.delivery.remote_state == event.delivery.MODIFIED else "released")


Container(Peer()).run()
