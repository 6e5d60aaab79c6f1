"""The bytes of a CONNECT tunnel, copied both ways by one thread, with an idle timeout."""

from __future__ import annotations

import contextlib
import selectors
import socket

PIECE = 65536


def pump(client: socket.socket, server: socket.socket, pending: bytes, idle_timeout: float) -> tuple[int, int, str]:
    """Copy bytes both ways until both sides have closed, or nothing moves for
    ``idle_timeout``. An end of one direction is passed on as a half close, so that a client
    that shuts its writing side still gets its answer. Neither direction holds more than a
    piece in the proxy: a side that does not read stops the other from sending.
    Returns (bytes to the server, bytes to the client, how it ended)."""
    peer = {client: server, server: client}
    outbox = {client: bytearray(), server: bytearray(pending)}  # what is to be sent to each side
    ended = {client: False, server: False}  # that side has sent all it will
    sent = {client: 0, server: 0}
    for sock in (client, server):
        sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        for sock in (client, server):
            selector.register(sock, selectors.EVENT_READ)
        while True:
            for sock in (client, server):
                events = 0
                if not ended[sock] and len(outbox[peer[sock]]) < PIECE:
                    events |= selectors.EVENT_READ
                if outbox[sock]:
                    events |= selectors.EVENT_WRITE
                _set_events(selector, sock, events)
            if not selector.get_map():
                return sent[server], sent[client], "both sides closed"
            ready = selector.select(idle_timeout)
            if not ready:
                return sent[server], sent[client], f"idle for {idle_timeout:g} s"
            try:
                for key, mask in ready:
                    sock = client if key.fileobj is client else server
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(PIECE)
                        if data:
                            outbox[peer[sock]] += data
                        else:
                            ended[sock] = True
                    if mask & selectors.EVENT_WRITE and outbox[sock]:
                        count = sock.send(outbox[sock])
                        del outbox[sock][:count]
                        sent[sock] += count
                    for side in (client, server):
                        if ended[peer[side]] and not outbox[side]:
                            with contextlib.suppress(OSError):
                                side.shutdown(socket.SHUT_WR)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return sent[server], sent[client], f"a side broke off: {exc.strerror or exc}"


def _set_events(selector: selectors.BaseSelector, sock: socket.socket, events: int) -> None:
    registered = sock in selector.get_map()
    if events and registered:
        selector.modify(sock, events)
    elif events:
        selector.register(sock, events)
    elif registered:
        selector.unregister(sock)
