#!/usr/bin/env python3
"""Publish one message to NATS the way `nats pub` does (stdlib only), for machines without the nats CLI.

    python3 scripts/nats_pub.py [--server 127.0.0.1:4222] [--user backend --password dev-backend] \
        [-H Goim-Op:1000] room.live.1000 '{"test":1}'
"""
import argparse
import json
import socket


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="127.0.0.1:4222")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("-H", "--header", action="append", default=[], help="Name:Value")
    ap.add_argument("subject")
    ap.add_argument("body")
    args = ap.parse_args()
    host, port = args.server.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.recv(65536)  # INFO
    body = args.body.encode()
    connect = {"verbose": False, "pedantic": False, "headers": True}
    if args.user:
        connect.update(user=args.user, **{"pass": args.password})
    out = b"CONNECT " + json.dumps(connect).encode() + b"\r\n"
    if args.header:
        hdr = "NATS/1.0\r\n" + "".join("%s: %s\r\n" % tuple(h.split(":", 1)) for h in args.header) + "\r\n"
        hdr = hdr.encode()
        out += b"HPUB %s %d %d\r\n%s%s\r\n" % (args.subject.encode(), len(hdr), len(hdr) + len(body), hdr, body)
    else:
        out += b"PUB %s %d\r\n%s\r\n" % (args.subject.encode(), len(body), body)
    sock.sendall(out + b"PING\r\n")
    reply = b""
    while b"PONG" not in reply and b"-ERR" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    if b"-ERR" in reply:
        raise SystemExit(reply.decode().strip())
    print("published to %s" % args.subject)


if __name__ == "__main__":
    main()
