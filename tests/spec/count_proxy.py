#!/usr/bin/python3
"""A TCP proxy that writes the HTTP request lines passing through it: what a client really asked.

    count_proxy.py TARGET_PORT LOG_FILE

Listens on 127.0.0.1 (an ephemeral port, printed on stdout as its first line), forwards every
connection to 127.0.0.1:TARGET_PORT, and appends each request line sent by a client ("POST
/v1/sagas/Trip?wait=30000ms") to LOG_FILE as it passes. Runs until killed."""
import re
import socket
import sys
import threading

REQ = re.compile(rb"((?:GET|POST|PUT|DELETE|PATCH|HEAD) /\S*) HTTP/1\.[01]\r\n")
target, log_path = int(sys.argv[1]), sys.argv[2]
log_lock = threading.Lock()


def pipe(src, dst, log):
    seen = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if log:
                seen = (seen + data)[-70000:]
                found = REQ.findall(seen)
                if found:
                    with log_lock, open(log_path, "ab") as f:
                        for line in found:
                            f.write(line + b"\n")
                    seen = seen[seen.rfind(b" HTTP/1."):]  # each request line once
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client):
    upstream = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pipe, args=(client, upstream, True), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    serve(conn)
