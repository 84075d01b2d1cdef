#!/usr/bin/env python3
"""A minimal goim TCP client (stdlib only), for trying the edge by hand.

    python3 scripts/goim_client.py [--addr 127.0.0.1:3101] [--mid 123] [--room live://1000] [--accepts 1000,1001,1002] [--token T]

It authenticates (op 7) exactly like goim's clients, heartbeats every 30 s and prints every packet it
receives. TCP clients receive pushes as plain packets; op 3 carries the room's online count.
"""
import argparse
import json
import socket
import struct
import threading
import time

HEADER = struct.Struct(">ihhii")


def packet(op, body=b"", ver=1, seq=0):
    return HEADER.pack(16 + len(body), 16, ver, op, seq) + body


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed by the edge")
        data += chunk
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:3101")
    ap.add_argument("--mid", type=int, default=123)
    ap.add_argument("--key", default="")
    ap.add_argument("--room", default="live://1000")
    ap.add_argument("--accepts", default="1000,1001,1002")
    ap.add_argument("--token", default="", help="goim-authsvc token (edges in auth.mode = token)")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    auth = {"mid": args.mid, "key": args.key, "room_id": args.room, "platform": "cli",
            "accepts": [int(x) for x in args.accepts.split(",") if x]}
    if args.token:
        auth["token"] = args.token
    sock.sendall(packet(7, json.dumps(auth).encode(), seq=1))

    def beat():
        seq = 2
        while True:
            sock.sendall(packet(2, seq=seq))
            seq += 1
            time.sleep(30)

    while True:
        pack_len, _, ver, op, seq = HEADER.unpack(read_exact(sock, 16))
        body = read_exact(sock, max(pack_len - 16, 0))
        if op == 8:
            print("auth ok: in room %r as mid %d" % (args.room, args.mid), flush=True)
            threading.Thread(target=beat, daemon=True).start()
        elif op == 3:
            print("heartbeat reply: %d online in the room" % struct.unpack(">i", body)[0], flush=True)
        else:
            print("op=%d ver=%d seq=%d body=%s" % (op, ver, seq, body.decode("utf-8", "replace")), flush=True)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, EOFError) as e:
        print(e or "bye")
