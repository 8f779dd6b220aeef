#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the seed corpus for fuzz/nbd_fuzz.cc into fuzz/corpus/nbd/: a few complete
# client conversations (handshake variants followed by requests).
import os, struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "nbd")
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513

def opt(code, payload=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(payload)) + payload

def go(name, infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)

def meta(name, queries):
    body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    return body + b"".join(struct.pack(">I", len(q)) + q for q in queries)

def req(cmd, offset, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, offset, length) + payload

FLAGS = struct.pack(">I", 3)
seeds = {
    "go-simple": FLAGS + opt(7, go(b"vol")) + req(1, 0, 8, 1, payload=b"A" * 8) + req(0, 0, 8) + req(3, 0, 0) + req(2, 0, 0),
    "go-structured-meta": FLAGS + opt(8) + opt(10, meta(b"vol", [b"base:allocation"])) + opt(7, go(b"vol", (1, 3)))
        + req(7, 0, 65536, 8) + req(6, 512, 4096, 2) + req(4, 0, 512, 1) + req(0, 4096, 512, 4),
    "export-name": FLAGS + opt(1, b"other") + req(0, 0, 1536) + req(1, 1024, 1024, payload=b"B" * 1024),
    "list-info-abort": FLAGS + opt(3) + opt(6, go(b"other")) + opt(9, meta(b"vol", [])) + opt(2),
    "errors": FLAGS + opt(0x55, b"xyz") + opt(7, go(b"x" * 300)) + opt(7, go(b""))
        + opt(7, go(b"vol")) + req(0, 2**64 - 512, 1024) + req(1, 2**20 - 10, 20, payload=b"C" * 20) + req(99, 0, 1),
    # STARTTLS (5): plaintext options first (refused when TLS is required, forgotten at
    # the upgrade otherwise), then negotiation again "inside" TLS (simulated).
    "starttls": FLAGS + opt(8) + opt(3) + opt(5, b"x") + opt(5) + opt(5) + opt(8)
        + opt(10, meta(b"vol", [b"base:allocation"])) + opt(7, go(b"vol")) + req(7, 0, 4096),
    "export-name-before-starttls": FLAGS + opt(1, b"vol") + req(0, 0, 512),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {OUT}")
