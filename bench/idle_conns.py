"""
Memory per idle client connection: open N keep-alive connections to a
cdnpull process (each has sent one request and got its answer), and
compare the twistd RSS before and after.  Runs nginx the same way for
comparison (one worker).

    python bench/idle_conns.py [--connections 5000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port, rss_kib, start_nginx, stop_all, wait_port  # noqa: E402


def open_idle(port: int, n: int) -> list:
    socks = []
    request = b"GET /1k.bin HTTP/1.1\r\nHost: bench.test\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for s in socks:  # read each answer (1 KiB body + head) so the connection is idle
        s.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return socks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections * 2 + 1000), hard))
    work = tempfile.mkdtemp(prefix="cdnpull-idle-")
    os.chmod(work, 0o755)
    www = os.path.join(work, "www")
    os.makedirs(www)
    with open(os.path.join(www, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    origin_port, nginx_port, cdn_port = free_port("127.0.0.2"), free_port(), free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""
            worker_processes 1;
            worker_rlimit_nofile {args.connections * 2 + 1000};
            error_log {work}/nginx-error.log;
            pid {work}/nginx.pid;
            events {{ worker_connections {args.connections * 2 + 100}; }}
            http {{
                access_log off;
                keepalive_timeout 300s;
                keepalive_requests 100000;
                client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
                fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
                proxy_cache_path {work}/nginx-cache keys_zone=c:10m;
                server {{ listen 127.0.0.2:{origin_port}; root {www};
                          location / {{ add_header Cache-Control "max-age=3600"; }} }}
                server {{ listen 127.0.0.1:{nginx_port};
                          location / {{ proxy_pass http://127.0.0.2:{origin_port}; proxy_cache c; }} }}
            }}
            """))
    site = os.path.join(work, "site.py")
    with open(site, "w") as f:
        f.write(textwrap.dedent(f"""
            from cdnpull.config import Domain, IPOrigin, Settings
            settings = Settings(client_idle_timeout=300)
            domains = [Domain("bench.test", origin=IPOrigin(["127.0.0.2:{origin_port}"]), probe=None)]
            """))
    nginx = start_nginx(conf)
    cdn = subprocess.Popen(
        ["bash", "-c", f"ulimit -n {args.connections * 2 + 1000}; exec " + shlex.join(
            cdn_argv(work, site, f"tcp:{cdn_port}:interface=127.0.0.1", logfile="/dev/null"))],
        cwd=work)
    try:
        for port, host in ((origin_port, "127.0.0.2"), (nginx_port, "127.0.0.1"), (cdn_port, "127.0.0.1")):
            wait_port(port, host)
        nginx_worker = int(subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True,
                                          text=True).stdout.split()[0])
        print(f"{args.connections} idle keep-alive connections (each answered one 1 KiB request)")
        for name, port, pid in (("cdnpull (twistd)", cdn_port, cdn.pid),
                                ("nginx (worker)", nginx_port, nginx_worker)):
            open_idle(port, 10)  # warm: the object is cached, code paths loaded
            time.sleep(0.5)
            before = rss_kib(pid)
            socks = open_idle(port, args.connections)
            # Idle for a few seconds, as such connections are (cdnpull lets
            # go of a connection's parser after one idle second).
            time.sleep(3)
            after = rss_kib(pid)
            print(f"   {name:18s} RSS {before / 1024:6.1f} -> {after / 1024:6.1f} MiB: "
                  f"{(after - before) * 1024 / args.connections / 1024:5.1f} KiB per connection")
            for s in socks:
                s.close()
    finally:
        stop_all(cdn, nginx, work)


if __name__ == "__main__":
    main()
