#!/usr/bin/python3
"""A TLS front for the tests' broker, so the spec can run --amqp1 over amqps:// (the broker itself
listens without TLS).

    tls_proxy.py CERT KEY UPSTREAM_PORT

Listens on 127.0.0.1 (a free port: it prints "LISTENING <port>"), terminates TLS with CERT/KEY and
forwards the plain bytes to 127.0.0.1:UPSTREAM_PORT, both ways, one upstream connection per client.
"""
import asyncio
import ssl
import sys

CERT, KEY, UPSTREAM = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def client(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    server = await asyncio.start_server(client, "127.0.0.1", 0, ssl=ctx)
    print("LISTENING %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
