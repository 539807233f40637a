"""
cdnpull against Twisted's own servers and nginx, same machine, same run,
reported as ratios (the performance targets of the README):

 - 1 KiB and 100 KiB memory hits vs Twisted's static.File serving the same
   files (and vs nginx proxy_cache hits);
 - the miss path (a no-store object, through the failover chain to one
   origin) vs Twisted's ReverseProxyResource (and vs nginx proxy_pass);
 - a bare httptools protocol answering a canned 1 KiB (the ceiling);
 - optionally memory per idle keep-alive connection (bench/idle_conns.py)
   and RSS while streaming 1 GiB objects (bench/cache_bench.py).

Every server runs pinned to core 0 (taskset), wrk and the origin to core 1,
one server at a time; rounds alternate the servers and the median is
reported with the spread.  Before each round it waits (up to --quiet-wait
seconds) for both cores to be mostly idle, and prints how busy they were.

Needs nginx and wrk (apt-get install nginx wrk):

    python bench/speed.py [--seconds 5] [--rounds 3] [--connections 50] [--memory]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port, nginx_conf, pinned, stop, wait_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "bench.test"


def cpu_times() -> list[tuple[int, int]]:
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                v = [int(x) for x in line.split()[1:]]
                out.append((sum(v), v[3] + v[4]))
    return out


def busy(interval: float = 0.5) -> list[float]:
    a = cpu_times()
    time.sleep(interval)
    b = cpu_times()
    return [1 - (bi - ai) / max(1, bt - at) for (at, ai), (bt, bi) in zip(a, b)]


def wait_quiet(limit: float, most: float = 0.2) -> list[float]:
    deadline = time.monotonic() + limit
    while True:
        load = busy()
        if max(load) <= most or time.monotonic() > deadline:
            return load


def process_ticks(pid: int) -> int:
    """User and system CPU ticks of process C{pid} and its children (nginx's worker)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12]) + sum(process_ticks(c) for c in children)


def steal_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all cores: time the hypervisor gave another guest."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[7] if len(v) > 7 else 0), sum(v)


STEALS: list[float] = []  # the share of each wrk run's time stolen, in order


def wrk(port: int, path: str, seconds: int, connections: int) -> float:
    steal0, total0 = steal_ticks()
    out = subprocess.run(pinned("1", ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                                      "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True).stdout
    steal1, total1 = steal_ticks()
    STEALS.append((steal1 - steal0) / max(1, total1 - total0))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"      (wrk on :{port}{path}: {errors.group(0)})")
    return float(m.group(1)) if m else 0.0


def get(port: int, path: str) -> tuple[int, dict, bytes]:
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Host": HOST})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--access-log", default="file",
                    help="cdnpull's access log: file (buffered, the production set-up), "
                         "event (the default: a twisted.logger event) or off")
    ap.add_argument("--only", default="", help="comma-separated row names to run")
    ap.add_argument("--each", action="store_true", help="also print every round's req/s, in order")
    ap.add_argument("--memory", action="store_true",
                    help="also run idle_conns.py and cache_bench.py --stream-only")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cdnpull-speed-")
    os.chmod(work, 0o755)  # nginx workers may run as another user
    www = os.path.join(work, "www")
    os.makedirs(os.path.join(www, "nostore"))
    for name, size in (("1k.bin", 1024), ("100k.bin", 100 * 1024), ("nostore/1k.bin", 1024)):
        with open(os.path.join(www, name), "wb") as f:
            f.write(os.urandom(size))

    ports = {name: free_port() for name in ("cdn", "static", "proxy", "nginx", "canned")}
    origin_port = free_port("127.0.0.2")
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(nginx_conf(work, f"""
                upstream origin {{ server 127.0.0.2:{origin_port}; keepalive 64; }}
                server {{
                    listen 127.0.0.2:{origin_port} backlog=1024;
                    root {www};
                    location / {{ add_header Cache-Control "max-age=3600"; }}
                    location /nostore/ {{ add_header Cache-Control "no-store"; }}
                }}
                server {{
                    listen 127.0.0.1:{ports['nginx']} backlog=1024;
                    location / {{
                        proxy_pass http://origin;
                        proxy_cache c;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        add_header X-Cache $upstream_cache_status;
                    }}
                }}
            """))
    # The origin and nginx's cache are two nginx processes: the origin (and
    # wrk) on core 1, the measured nginx on core 0 with the other servers.
    with open(os.path.join(work, "nginx.conf")) as f:
        conf = f.read()
    origin_conf = conf.replace(f"listen 127.0.0.1:{ports['nginx']}", f"listen 127.0.0.1:{free_port()}")
    proxy_conf = conf.replace(f"listen 127.0.0.2:{origin_port} backlog=1024;",
                              f"listen 127.0.0.2:{free_port('127.0.0.2')};")
    for name, text in (("origin", origin_conf), ("proxy", proxy_conf)):
        text = text.replace(f"pid {work}/nginx.pid", f"pid {work}/nginx-{name}.pid")
        text = text.replace("nginx-cache", f"nginx-cache-{name}")
        with open(os.path.join(work, f"nginx-{name}.conf"), "w") as f:
            f.write(text)

    access_log = {"file": repr(os.path.join(work, "access.log")), "event": "None", "off": '"off"'}[args.access_log]
    site = os.path.join(work, "site.py")
    with open(site, "w") as f:
        f.write(textwrap.dedent(f"""
            from cdnpull.config import Domain, IPOrigin, Settings
            settings = Settings(access_log={access_log})
            domains = [Domain("{HOST}", origin=IPOrigin(["127.0.0.2:{origin_port}"]), probe=None)]
            """))

    procs: list[subprocess.Popen] = []
    pids: dict = {}  # the measured servers' process ids, by port key

    def start(core: str, argv: list[str], **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        p = subprocess.Popen(pinned(core, argv), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=work, **kw)
        procs.append(p)
        return p

    try:
        start("1", ["nginx", "-c", os.path.join(work, "nginx-origin.conf"), "-g", "daemon off;"])
        pids["nginx"] = start("0", ["nginx", "-c", os.path.join(work, "nginx-proxy.conf"),
                                    "-g", "daemon off;"]).pid
        py = sys.executable
        pids["static"] = start("0", [py, os.path.join(HERE, "twisted_peers.py"), "static", www,
                                     str(ports["static"])]).pid
        pids["proxy"] = start("0", [py, os.path.join(HERE, "twisted_peers.py"), "proxy",
                                    f"127.0.0.2:{origin_port}", str(ports["proxy"])]).pid
        pids["canned"] = start("0", [py, os.path.join(HERE, "canned.py"), str(ports["canned"])]).pid
        env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
        pids["cdn"] = start("0", cdn_argv(work, site, f"tcp:{ports['cdn']}:interface=127.0.0.1:backlog=1024",
                                          logfile=os.path.join(work, "twistd.log")), env=env).pid
        wait_port(origin_port, "127.0.0.2")
        for p in ports.values():
            wait_port(p)
        for port in (ports["cdn"], ports["nginx"]):  # warm both caches
            for path in ("/1k.bin", "/100k.bin"):
                get(port, path)
                status, headers, body = get(port, path)
                assert headers.get("x-cache", "").startswith("HIT"), (port, path, headers)
        status, headers, body = get(ports["cdn"], "/nostore/1k.bin")
        assert status == 200 and headers.get("x-cache") == "MISS", headers

        rows = [
            ("hit 1 KiB", "/1k.bin", [("cdnpull", "cdn"), ("static.File", "static"),
                                       ("nginx", "nginx"), ("canned httptools", "canned")]),
            ("hit 100 KiB", "/100k.bin", [("cdnpull", "cdn"), ("static.File", "static"),
                                           ("nginx", "nginx")]),
            ("miss (no-store)", "/nostore/1k.bin", [("cdnpull", "cdn"),
                                                    ("ReverseProxyResource", "proxy"),
                                                    ("nginx", "nginx")]),
        ]
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if only:
            rows = [r for r in rows if any(o in r[0] for o in only)]
        nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {nginx_v}; "
              f"cdnpull access log: {args.access_log}")
        print(f"servers on core 0, wrk -t1 -c{args.connections} -d{args.seconds}s and the origin on core 1; "
              f"{args.rounds} rounds, median (min-max)")
        results: dict = {}
        steals: dict = {}
        shares: dict = {}  # the server's own CPU use during each run (1.0: a whole core)
        loads: list[float] = []
        for rnd in range(args.rounds):
            for row, path, peers in rows:
                for label, key in peers:
                    load = wait_quiet(args.quiet_wait)
                    loads.append(max(load))
                    cpu0 = process_ticks(pids[key])
                    rps = wrk(ports[key], path, args.seconds, args.connections)
                    busy_share = (process_ticks(pids[key]) - cpu0) / os.sysconf("SC_CLK_TCK") / args.seconds
                    shares.setdefault((row, label), []).append(busy_share)
                    results.setdefault((row, label), []).append(rps)
                    steals.setdefault((row, label), []).append(STEALS[-1])
        print(f"busiest core before a run: median {statistics.median(loads):.0%}, "
              f"max {max(loads):.0%} (other work on the machine); CPU time stolen by the "
              f"hypervisor during runs: median {statistics.median(STEALS):.0%}, "
              f"max {max(STEALS):.0%}\n")
        print(f"{'':18s} {'server':22s} {'req/s':>22s} {'cdnpull is':>14s}")
        for row, path, peers in rows:
            ours = statistics.median(results[(row, "cdnpull")])
            for label, key in peers:
                v = results[(row, label)]
                med = statistics.median(v)
                ratio = "" if label == "cdnpull" else f"{ours / med:.2f}x" if med else "-"
                print(f"{row:18s} {label:22s} {med:9.0f} ({min(v):.0f}-{max(v):.0f}) {ratio:>14s}"
                      + (f"   rounds: {' '.join(f'{x:.0f}' for x in v)}   stolen: "
                         f"{' '.join(f'{x:.0%}' for x in steals[(row, label)])}   server CPU: "
                         f"{' '.join(f'{x:.0%}' for x in shares[(row, label)])}" if args.each else ""))
            print()
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    if args.memory:
        print("memory per idle keep-alive connection (bench/idle_conns.py --connections 2000):")
        subprocess.run([sys.executable, os.path.join(HERE, "idle_conns.py"), "--connections", "2000"],
                       env=env)
        print("\nRSS while streaming (bench/cache_bench.py --stream-only):")
        subprocess.run([sys.executable, os.path.join(HERE, "cache_bench.py"), "--stream-only"], env=env)


if __name__ == "__main__":
    main()
