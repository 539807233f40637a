"""
The cache benchmark: cdnpull and nginx (proxy_cache) side by side, same
machine, same run.

 1. Memory of the twistd process while 4 clients stream a 1 GiB object
    through it: one larger than cache_max_object (streamed through the
    cache, not stored), then one marked no-store (relayed by the
    connection, cdnpull/direct.py).
 2. Requests/s of 1 KiB cache hits with wrk, cdnpull against nginx
    proxy_cache in front of the same origin.

Needs nginx and wrk (apt-get install nginx wrk).  Everything runs on
loopback: the origin is an nginx serving files on 127.0.0.2.

    python bench/cache_bench.py [--seconds 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (cdn_argv, free_port, nginx_conf, rss_kib, start_nginx,  # noqa: E402
                    stop_all, wait_port)


def wrk(url: str, host: str, seconds: int, connections: int) -> tuple[float, str]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-H", f"Host: {host}", url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    return rps, p50.group(1) if p50 else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--stream-only", action="store_true", help="skip the wrk part")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cdnpull-bench-")
    os.chmod(work, 0o755)  # nginx workers run as another user
    www = os.path.join(work, "www")
    os.makedirs(www)
    with open(os.path.join(www, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    os.makedirs(os.path.join(www, "nostore"))
    for name in ("big.bin", "nostore/big.bin"):
        with open(os.path.join(www, name), "wb") as f:
            f.truncate(args.size_mib * 1024 * 1024)  # sparse: the disk is not the bottleneck
    origin_port, nginx_cache_port, cdn_port = free_port("127.0.0.2"), free_port(), free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, f"""
                server {{
                    listen 127.0.0.2:{origin_port};
                    root {www};
                    location / {{ add_header Cache-Control "max-age=3600"; }}
                    location /nostore/ {{ add_header Cache-Control "no-store"; }}
                }}
                server {{
                    listen 127.0.0.1:{nginx_cache_port};
                    location / {{
                        proxy_pass http://127.0.0.2:{origin_port};
                        proxy_cache c;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        add_header X-Cache $upstream_cache_status;
                    }}
                }}
            """))
    site = os.path.join(work, "site.py")
    with open(site, "w") as f:
        f.write(textwrap.dedent(f"""
            from cdnpull.config import Domain, IPOrigin, Settings
            settings = Settings(access_log=None)
            domains = [Domain("bench.test", origin=IPOrigin(["127.0.0.2:{origin_port}"]), probe=None)]
            """))
    nginx = start_nginx(conf)
    log = open(os.path.join(work, "twistd.log"), "w")
    listen = f"tcp:{cdn_port}:interface=127.0.0.1"
    cdn = subprocess.Popen(cdn_argv(work, site, listen, logfile="/dev/null"),
                           stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        wait_port(origin_port, "127.0.0.2")
        wait_port(nginx_cache_port)
        wait_port(cdn_port)
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
              f"{subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}")

        # -- 1. memory while streaming -------------------------------------
        # big.bin is larger than cache_max_object (streamed through the
        # cache's fill, not stored); nostore/big.bin, once its first answer
        # said no-store, is relayed by the connection (cdnpull/direct.py).
        curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", "-H", "Host: bench.test"]
        subprocess.run(curl + [f"http://127.0.0.1:{cdn_port}/nostore/big.bin"],
                       capture_output=True, check=True)
        for path, how in (("big.bin", "larger than cache_max_object: streamed, not stored"),
                          ("nostore/big.bin", "no-store: relayed by the connection")):
            time.sleep(1)
            idle = rss_kib(cdn.pid)
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss_kib(cdn.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            curls = [subprocess.Popen(curl + [f"http://127.0.0.1:{cdn_port}/{path}"],
                                      stdout=subprocess.PIPE, text=True) for _ in range(4)]
            sizes = [int(c.communicate()[0] or 0) for c in curls]
            assert sizes == [args.size_mib * 2**20] * 4, sizes
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            total = sum(sizes)
            print(f"\n1. 4 clients x {args.size_mib} MiB of /{path} through cdnpull ({how})")
            print(f"   received {total / 2**20:.0f} MiB in {elapsed:.1f} s "
                  f"({total / 2**20 / elapsed:.0f} MiB/s in all)")
            print(f"   twistd RSS idle {idle / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB, "
                  f"growth {(peak[0] - idle) / 1024:.1f} MiB")

        # -- 2. 1 KiB hits ----------------------------------------------------
        if args.stream_only:
            return
        for port in (cdn_port, nginx_cache_port):  # warm both caches
            out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", "Host: bench.test",
                                  f"http://127.0.0.1:{port}/1k.bin"], capture_output=True, text=True).stdout
            out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", "Host: bench.test",
                                  f"http://127.0.0.1:{port}/1k.bin"], capture_output=True, text=True).stdout
            status = re.search(r"(?i)x-cache: (\w+)", out)
            assert status and status.group(1) == "HIT", out
        print(f"\n2. 1 KiB cache hits, wrk -t2 -c{args.connections} -d{args.seconds}s")
        for name, port in (("cdnpull (1 process)", cdn_port), ("nginx proxy_cache (1 worker)", nginx_cache_port)):
            rps, p50 = wrk(f"http://127.0.0.1:{port}/1k.bin", "bench.test", args.seconds, args.connections)
            print(f"   {name:30s} {rps:10.0f} req/s   p50 {p50}")
    finally:
        stop_all(cdn, nginx, work)


if __name__ == "__main__":
    main()
