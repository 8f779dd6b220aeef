#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# How steady is this disk? Writes the same 1 GiB (1 MiB pwrites into a file in /tmp)
# six times: with one fdatasync at the end, or with an fdatasync every 16 / 128 MiB
# (the replica's progress record does that every 16 MiB) plus a small renamed file.
# Prints the seconds of each run and the load average before and after. The spread
# between identical runs bounds what any copy benchmark on this disk can tell.
#   python3 bench/disk-noise.py [DIR]
import os, sys, tempfile, time

directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
data = os.urandom(512 << 20)
work = tempfile.mkdtemp(prefix="disk-noise.", dir=directory)
target, meta = os.path.join(work, "data"), os.path.join(work, "meta")


def run(sync_every):
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start, since = time.monotonic(), 0
    for rep in range(2):
        for offset in range(0, len(data), 1 << 20):
            os.pwrite(fd, data[offset:offset + (1 << 20)], rep * len(data) + offset)
            since += 1 << 20
            if sync_every and since >= sync_every:
                os.fdatasync(fd)
                since = 0
                small = os.open(meta + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(small, b"x" * 200)
                os.fsync(small)
                os.close(small)
                os.rename(meta + ".tmp", meta)
                dir_fd = os.open(work, os.O_RDONLY)
                os.fsync(dir_fd)
                os.close(dir_fd)
    os.fdatasync(fd)
    os.close(fd)
    return time.monotonic() - start


print(f"load average before: {open('/proc/loadavg').read().strip()}")
try:
    for every in (0, 16 << 20, 128 << 20) * 2:
        label = "one fdatasync at the end" if every == 0 else f"fdatasync every {every >> 20} MiB"
        print(f"1 GiB, {label:<28} {run(every):6.2f} s", flush=True)
finally:
    for path in (target, meta):
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(work)
print(f"load average after: {open('/proc/loadavg').read().strip()}")
