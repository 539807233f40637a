"""
HTTPS to clients: cdnpull (a tls: listener) against nginx (ssl + http2 +
proxy_cache), same machine, same run, same certificate: requests/s of a
1 KiB cache hit with h2load, over HTTP/2 and over HTTP/1.1 on TLS, reported
as ratios.

Needs nginx and h2load (apt-get install nginx nghttp2-client) and trustme
(the test extra).  Everything runs on loopback: the origin is an nginx
serving files on 127.0.0.2.

    python bench/tls_bench.py [--seconds 10] [--clients 50] [--streams 10]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import trustme

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port, nginx_conf, start_nginx, stop_all, wait_port  # noqa: E402

HOST = "bench.test"


def h2load(port: int, seconds: int, clients: int, streams: int, h1: bool) -> tuple[float, int]:
    """Requests/s, and requests that failed (h2load counts those in flight
    when the duration ends as failed)."""
    args = ["h2load", f"--connect-to=127.0.0.1:{port}", "-c", str(clients),
            "-t", "1", "-D", str(seconds), "--warm-up-time=1"]
    args += ["--h1"] if h1 else ["-m", str(streams)]
    out = subprocess.run(args + [f"https://{HOST}:{port}/1k.bin"], capture_output=True,
                         text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed",
                     out)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not rps or not int(done.group(2)):
        raise RuntimeError(f"h2load failed:\n{out}")
    return float(rps.group(1)), int(done.group(3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per h2 client")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cdnpull-tls-bench-")
    os.chmod(work, 0o755)  # nginx workers run as another user
    www = os.path.join(work, "www")
    os.makedirs(www)
    with open(os.path.join(www, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    cert_file, key_file = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    with open(cert_file, "wb") as f:
        f.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key_file)
    os.chmod(key_file, 0o644)  # read by nginx's worker user (a throwaway key)
    origin_port, nginx_port, cdn_port = free_port("127.0.0.2"), free_port(), free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, f"""
                server {{
                    listen 127.0.0.2:{origin_port};
                    root {www};
                    location / {{ add_header Cache-Control "max-age=3600"; }}
                }}
                server {{
                    listen 127.0.0.1:{nginx_port} ssl http2;
                    ssl_certificate {cert_file};
                    ssl_certificate_key {key_file};
                    ssl_protocols TLSv1.2 TLSv1.3;
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
            from cdnpull.config import Certificate, Domain, IPOrigin
            domains = [Domain("{HOST}", origin=IPOrigin(["127.0.0.2:{origin_port}"]), probe=None,
                              certificate=Certificate({cert_file!r}, {key_file!r}))]
            """))
    nginx = start_nginx(conf)
    log = open(os.path.join(work, "twistd.log"), "w")
    listen = f"tls:{cdn_port}:interface=127.0.0.1"
    cdn = subprocess.Popen(cdn_argv(work, site, listen, logfile="/dev/null"),
                           stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        wait_port(origin_port, "127.0.0.2")
        wait_port(nginx_port)
        wait_port(cdn_port)
        for port in (cdn_port, nginx_port):  # warm both caches
            for _ in range(2):
                out = subprocess.run(["curl", "-s", "--http2", "-D", "-", "-o", "/dev/null",
                                      "-k",
                                      "--resolve", f"{HOST}:{port}:127.0.0.1",
                                      f"https://{HOST}:{port}/1k.bin"],
                                     capture_output=True, text=True).stdout
            status = re.search(r"(?i)x-cache: (\w+)", out)
            assert out.startswith("HTTP/2 200") and status and status.group(1) == "HIT", out
        version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {version}")
        print(f"1 KiB cache hits over TLS, h2load -c {args.clients} -D {args.seconds} "
              f"(-m {args.streams} for h2), one cdnpull process, one nginx worker")
        for label, h1 in (("HTTP/2", False), ("HTTP/1.1 over TLS", True)):
            ours, our_failed = h2load(cdn_port, args.seconds, args.clients, args.streams, h1)
            theirs, their_failed = h2load(nginx_port, args.seconds, args.clients, args.streams, h1)
            print(f"   {label:18s} cdnpull {ours:9.0f} req/s   nginx {theirs:9.0f} req/s   "
                  f"ratio {ours / theirs:.2f}   (failed: {our_failed} / {their_failed})")
    finally:
        stop_all(cdn, nginx, work)


if __name__ == "__main__":
    main()
