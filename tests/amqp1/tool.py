#!/usr/bin/python3
"""Broker chores for the AMQP 1.0 spec (tests/spec/amqp1_spec.lua).

    tool.py declare PIKA_URL SERVICE... -- HOST_ID...
        RabbitMQ's amqp1_0 plugin does not declare the queues of /amq/queue/ addresses: declare, over
        AMQP 0-9-1 (pika), the topology of docs/protocol.md (the same as the --amqp host's): the
        exchanges saga.commands, saga.events and saga.dlx, saga.svc.<SERVICE> and saga.reply.<HOST_ID>,
        each dead-lettering through saga.dlx into its .dlq queue.
    tool.py bind-events PIKA_URL QUEUE PATTERN
        declare QUEUE and bind it to saga.events with PATTERN (a subscriber's queue)
    tool.py send AMQP1_URL ADDRESS JSON_SPEC
        send one message over AMQP 1.0 (python-qpid-proton) and print the broker's outcome; JSON_SPEC:
        {"body": "...", "id": "...", "correlation_id": "...", "reply_to": "...", "subject": "...",
         "properties": {...}}
    tool.py get AMQP1_URL ADDRESS [SECONDS]
        receive one message over AMQP 1.0 (waiting up to SECONDS, default 10), accept it and print it as
        JSON: {"id", "correlation_id", "reply_to", "subject", "content_type", "durable", "properties",
        "body"} or null
"""
import json
import sys

cmd = sys.argv[1]
if cmd == "declare":
    import pika

    url, rest = sys.argv[2], sys.argv[3:]
    cut = rest.index("--") if "--" in rest else len(rest)
    services, hosts = rest[:cut], rest[cut + 1:]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("saga.commands", "topic", durable=True)
    ch.exchange_declare("saga.events", "topic", durable=True)
    ch.exchange_declare("saga.dlx", "direct", durable=True)
    queues = ["saga.svc." + s for s in services] + ["saga.reply." + h for h in hosts]
    for q in queues:
        dlq = q + ".dlq"
        ch.queue_declare(dlq, durable=True)
        ch.queue_bind(dlq, "saga.dlx", routing_key=dlq)
        ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": "saga.dlx",
                                                     "x-dead-letter-routing-key": dlq})
    for s in services:
        ch.queue_bind("saga.svc." + s, "saga.commands", routing_key=s + ".#")
    conn.close()
elif cmd == "bind-events":
    import pika

    url, queue, pattern = sys.argv[2], sys.argv[3], sys.argv[4]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("saga.events", "topic", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "saga.events", routing_key=pattern)
    conn.close()
elif cmd == "send":
    from proton import Message
    from proton.utils import BlockingConnection

    url, address, spec = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    conn = BlockingConnection(url, allowed_mechs="PLAIN", timeout=20)
    sender = conn.create_sender(address)
    d = sender.send(Message(id=spec.get("id"), correlation_id=spec.get("correlation_id"),
                            reply_to=spec.get("reply_to"), subject=spec.get("subject"), durable=True,
                            properties=spec.get("properties"), body=spec.get("body", "").encode(), inferred=True))
    print(d.remote_state)
    conn.close()
elif cmd == "get":
    from proton.utils import BlockingConnection

    url, address = sys.argv[2], sys.argv[3]
    conn = BlockingConnection(url, allowed_mechs="PLAIN", timeout=20)
    rcv = conn.create_receiver(address, credit=1)
    out = None
    try:
        m = rcv.receive(timeout=float(sys.argv[4]) if len(sys.argv) > 4 else 10)
        body = m.body.decode() if isinstance(m.body, (bytes, memoryview)) else m.body
        out = {"id": m.id, "correlation_id": m.correlation_id, "reply_to": m.reply_to, "subject": m.subject,
               "content_type": m.content_type, "durable": m.durable, "properties": m.properties, "body": body}
        rcv.accept()
    except Exception:  # noqa: BLE001 (a time-out: nothing came)
        pass
    print(json.dumps(out))
    conn.close()
else:
    sys.exit("usage: tool.py declare PIKA_URL SERVICE... -- HOST_ID... | send AMQP1_URL ADDRESS JSON_SPEC | "
             "get AMQP1_URL ADDRESS [SECONDS]")
