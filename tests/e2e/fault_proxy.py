#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A TCP proxy that injects network faults between two amirror nodes (tests only).

Faults apply to the client->server direction (source -> target, where deltas flow),
except delay and rate, which apply both ways:
  --flip-every N     flip one random bit in roughly every N bytes
  --reset-within N   cut each of the first --resets connections with a TCP reset at a
                     random byte in [1, N]
  --delay-ms MS      hold every piece of data this long (latency)
  --rate BPS         cap the throughput per direction (bytes per second)
  --stall-ms MS      on the first connection, at a random byte, stop forwarding this long
Every injected fault is logged (one line) to --log so tests can count them.
"""
import argparse
import random
import socket
import struct
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--flip-every", type=int, default=0)
    parser.add_argument("--reset-within", type=int, default=0)
    parser.add_argument("--resets", type=int, default=0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--rate", type=int, default=0)
    parser.add_argument("--stall-ms", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", default="/dev/stderr")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    rng = random.Random(args.seed)
    log_lock = threading.Lock()
    log_file = open(args.log, "a", buffering=1)
    state = {"connections": 0}

    def log(message):
        with log_lock:
            log_file.write(f"{time.time():.3f} {message}\n")

    def pump(source, sink, faulty, connection_id, cut_at, stall_at):
        moved = 0
        next_flip = rng.randint(1, 2 * args.flip_every) if args.flip_every else None
        stalled = False
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if args.delay_ms:
                    time.sleep(args.delay_ms / 1000)
                if faulty and cut_at is not None and moved + len(data) >= cut_at:
                    keep = max(0, cut_at - moved)
                    sink.sendall(data[:keep])
                    log(f"reset connection {connection_id} after {cut_at} bytes")
                    for s in (source, sink):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.close()
                    return
                if faulty and next_flip is not None:
                    data = bytearray(data)
                    while moved + len(data) > next_flip:
                        index = next_flip - moved
                        data[index] ^= 1 << rng.randint(0, 7)
                        log(f"flipped a bit at byte {next_flip} of connection {connection_id}")
                        next_flip += rng.randint(1, 2 * args.flip_every)
                    data = bytes(data)
                if faulty and stall_at is not None and not stalled and moved + len(data) >= stall_at:
                    stalled = True
                    log(f"stalled connection {connection_id} for {args.stall_ms} ms")
                    time.sleep(args.stall_ms / 1000)
                sink.sendall(data)
                moved += len(data)
                if args.rate:
                    time.sleep(len(data) / args.rate)
        except OSError:
            pass
        # Like a real middlebox dropping the flow: both ends see the connection die.
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def handle(client):
        state["connections"] += 1
        connection_id = state["connections"]
        try:
            server = socket.create_connection((host, int(port)))
        except OSError as error:
            log(f"connection {connection_id}: cannot reach {args.to}: {error}")
            client.close()
            return
        cut_at = rng.randint(1, args.reset_within) if args.reset_within and connection_id <= args.resets else None
        stall_at = rng.randint(1, 1 << 20) if args.stall_ms and connection_id == 1 else None
        threading.Thread(target=pump, args=(client, server, True, connection_id, cut_at, stall_at), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, False, connection_id, None, None), daemon=True).start()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.listen))
    listener.listen(16)
    log(f"proxy 127.0.0.1:{args.listen} -> {args.to} ready")
    while True:
        client, _ = listener.accept()
        handle(client)


if __name__ == "__main__":
    sys.exit(main())
