"""
Failover under load: do clients see any error while origins fail?

A domain with two primary origin IPs (an nginx on 127.0.0.2 and one on
127.0.0.3, same port) and a standby (an nginx on 127.0.0.4).  wrk
(keep-alive, 50 connections by default) runs for --seconds against the
server under test; at --fault-at of the run (the middle by default) the
fault is applied:

 - ``none``: no fault (the baseline req/s);
 - ``kill``: one primary's nginx, master and worker, killed with SIGKILL
   (connections in progress are reset, new ones refused);
 - ``503``: both primaries answer every request with 503 (their probes
   too), the standby serves;
 - ``404``: both primaries answer the objects with 404, the standby serves
   them (``failover_on`` defaults to every status 400-599);
 - ``reload`` (not in the default list): both primaries' nginx reloaded
   (SIGHUP, same configuration): their old workers close the idle
   keep-alive connections the server holds.

cdnpull's domain keeps every default but the origins and the cache rule:
``Probe()`` (HEAD / every 5 s, a failure blocks the address for 60 s),
``failover_on``, the timeouts; its access log goes to a file.

The faults are switched by a flag file each origin nginx tests per request
(``if (-f .../503) { return 503; }``), so no reload blurs the moment.

The objects wrk asks for in turn (a Lua script) are uncacheable, so every
request goes through the failover chain: ``/nostore/obj`` (the origin says
``Cache-Control: no-store``: a hit-for-miss key) and ``/bypass/obj``
(``CacheRule(prefix="/bypass/", ttl=0)``); with --cacheable also
``/cache/obj`` (``max-age=1``: stored, refreshed through the chain every
second).  Each origin's body names it; the Lua script checks that every 200
body is exactly one origin's object for that path and counts who served it.

Client-visible errors counted: wrk's "Non-2xx or 3xx responses", its socket
errors (connect, read, write, timeout: wrk's --timeout, 2 s by default) and
bodies that are not an origin's object.  (wrk 4.1 hands the bytes of a
body cut short, already a read error, over in front of the next body it
reads: such a body, an origin's object after a few stray bytes, is counted
as that object, and the number of them shown.)  For cdnpull the access
log (statuses by group) and the twistd log's warnings are summarised after
each run.

The same scenarios run through nginx as a failover proxy for comparison
(``proxy_next_upstream error timeout http_503 http_404``, the standby a
``backup`` server, keep-alive to the upstreams, one worker): --servers
cdnpull,nginx (the default).  Every scenario starts fresh origins and a fresh
server (no block or ``max_fails`` state carried over).  The server runs on
core 0, wrk and the origins on core 1 (taskset).

Needs nginx and wrk (apt-get install nginx wrk), run as root or a user that
can bind 127.0.0.2-4:

    python bench/failover_load.py [--seconds 10] [--connections 50] [--rounds 1]
        [--scenarios none,kill,503,404] [--servers cdnpull,nginx] [--cacheable]
        [--size 1024] [--primaries 2] [--no-standby] [--keep]

(``--primaries 1 --no-standby --scenarios reload``: a single origin address
reloaded under load, where only a retry of the request can hide the
connections the origin closes.)
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port, nginx_conf, pinned, shared_port, wait_port  # noqa: E402
from speed import busy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "failover.test"
ORIGINS = (("p1", "127.0.0.2"), ("p2", "127.0.0.3"), ("standby", "127.0.0.4"))
SCENARIOS = ("none", "kill", "503", "404", "reload")


def body(label: str, path: str, size: int) -> bytes:
    """The object C{path} as the origin C{label} serves it (the Lua script
    builds the same)."""
    head = f"{label} {path} ".encode()
    return head + b"." * max(0, size - len(head) - 1) + b"\n"


LUA = r"""
local size = %(size)d
local labels = {%(labels)s}
local paths = {%(paths)s}
local valid = {}
for _, p in ipairs(paths) do
  for _, l in ipairs(labels) do
    local head = l .. " " .. p .. " "
    valid[head .. string.rep(".", math.max(0, size - #head - 1)) .. "\n"] = l
  end
end
counts = {}
for _, l in ipairs(labels) do counts[l] = 0 end
bad = 0
carried = 0
status_bad = 0
local shown = 0
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
response = function(status, headers, body)
  local l = valid[body]
  if status ~= 200 then
    status_bad = status_bad + 1
  elseif l then
    counts[l] = counts[l] + 1
  elseif #body > size and valid[string.sub(body, -size)] then
    -- wrk 4.1 keeps the bytes of a body cut short (counted as a read
    -- error) and hands them over in front of the next body it reads
    l = valid[string.sub(body, -size)]
    counts[l] = counts[l] + 1
    carried = carried + 1
  else
    bad = bad + 1
  end
  if (status ~= 200 or not l) and shown < 3 then
    shown = shown + 1
    io.stderr:write(string.format("bad answer: %%d %%q\n", status, string.sub(body or "", 1, 80)))
  end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local b, s, k, c = 0, 0, 0, {}
  for _, l in ipairs(labels) do c[l] = 0 end
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
    s = s + t:get("status_bad")
    k = k + t:get("carried")
    local tc = t:get("counts")
    for _, l in ipairs(labels) do c[l] = c[l] + tc[l] end
  end
  local parts = {}
  for _, l in ipairs(labels) do table.insert(parts, l .. "=" .. c[l]) end
  io.write(string.format("BODIES bad=%%d status=%%d carried=%%d %%s\n", b, s, k,
                         table.concat(parts, " ")))
end
"""


def origin_conf(work: str, label: str, ip: str, port: int) -> str:
    www = os.path.join(work, f"www-{label}")
    flags = os.path.join(work, f"flags-{label}")
    conf = nginx_conf(work, f"""
        server {{
            listen {ip}:{port} backlog=1024;
            root {www};
            if (-f {flags}/503) {{ return 503; }}
            if (-f {flags}/404) {{ return 404; }}
            location / {{ add_header Cache-Control "max-age=3600"; }}
            location /nostore/ {{ add_header Cache-Control "no-store"; }}
            location /cache/ {{ add_header Cache-Control "max-age=1"; }}
        }}
        """, cache=False)
    return conf.replace(f"pid {work}/nginx.pid", f"pid {work}/nginx-{label}.pid").replace(
        "nginx-error.log", f"nginx-{label}-error.log")


def proxy_conf(work: str, port: int, origin_port: int, primaries: list[str], standby: bool) -> str:
    servers = "".join(f"server {ip}:{origin_port};\n" for ip in primaries)
    if standby:
        servers += f"server 127.0.0.4:{origin_port} backup;\n"
    conf = nginx_conf(work, f"""
        upstream failover {{
            {servers}
            keepalive 64;
        }}
        server {{
            listen 127.0.0.1:{port} backlog=1024;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout http_503 http_404;
            location / {{ proxy_pass http://failover; }}
            location /cache/ {{ proxy_pass http://failover; proxy_cache c; }}
        }}
        """)
    return conf.replace(f"pid {work}/nginx.pid", f"pid {work}/nginx-proxy.pid").replace(
        "nginx-error.log", "nginx-proxy-error.log")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Host": HOST})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def parse_wrk(out: str) -> dict:
    res: dict = {"rps": 0.0, "requests": 0, "non2xx": 0, "connect": 0, "read": 0, "write": 0,
                 "timeout": 0, "bad": -1, "status": -1, "carried": 0, "served": {}}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res["requests"] = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res.update(connect=int(m.group(1)), read=int(m.group(2)), write=int(m.group(3)),
                   timeout=int(m.group(4)))
    if m := re.search(r"BODIES bad=(\d+) status=(\d+) carried=(\d+) (.*)", out):
        res["bad"] = int(m.group(1))
        res["status"] = int(m.group(2))
        res["carried"] = int(m.group(3))
        res["served"] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(4).split())}
    return res


def errors_of(r: dict) -> int:
    return r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"] + max(0, r["bad"])


class Run:
    """One scenario against one server: fresh origins, fresh server, wrk."""

    def __init__(self, args: argparse.Namespace, work: str, origin_port: int, lua: str) -> None:
        self.args = args
        self.work = work
        self.origin_port = origin_port
        self.lua = lua
        self.procs: list[subprocess.Popen] = []

    def start(self, core: str, argv: list[str], **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        p = subprocess.Popen(pinned(core, argv), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=self.work, **kw)
        self.procs.append(p)
        return p

    def origins(self) -> dict[str, subprocess.Popen]:
        out = {}
        for label, ip in ORIGINS:
            flags = os.path.join(self.work, f"flags-{label}")
            shutil.rmtree(flags, ignore_errors=True)
            os.makedirs(flags)
            out[label] = self.start("1", ["nginx", "-c", os.path.join(self.work, f"nginx-{label}.conf"),
                                          "-g", "daemon off;"])
        for label, ip in ORIGINS:
            wait_port(self.origin_port, ip)
        return out

    def fault(self, scenario: str, origins: dict[str, subprocess.Popen]) -> None:
        if scenario == "kill":
            master = origins["p1"]
            if master.poll() is not None:
                raise RuntimeError(f"the p1 nginx exited early ({master.returncode}): see its error log")
            # The master first: killed after a worker, it would fork a new one.
            for pid in [master.pid] + children(master.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.2", self.origin_port), 0.2).close()
                except OSError:
                    break  # refused: the primary is gone
                time.sleep(0.05)
            else:
                raise RuntimeError("127.0.0.2 still answers after its nginx was killed")
        elif scenario == "reload":
            for label in ("p1", "p2")[:self.args.primaries]:
                origins[label].send_signal(signal.SIGHUP)
        elif scenario in ("503", "404"):
            for label in ("p1", "p2")[:self.args.primaries]:
                open(os.path.join(self.work, f"flags-{label}", scenario), "w").close()

    def run(self, server: str, scenario: str) -> dict:
        args = self.args
        work = self.work
        port = free_port()
        for name in os.listdir(work):
            if name in ("access.log", "state.json") or name.startswith("twistd.log"):
                os.remove(os.path.join(work, name))
        try:
            origins = self.origins()
            if server == "cdnpull":
                standby = "None" if args.no_standby else f'IPOrigin(["127.0.0.4"], port={self.origin_port})'
                with open(os.path.join(work, "site.py"), "w") as f:
                    f.write(textwrap.dedent(f"""
                        from cdnpull.config import CacheRule, Domain, IPOrigin, Settings
                        settings = Settings(access_log={os.path.join(work, "access.log")!r})
                        domains = [Domain({HOST!r},
                                          origin=IPOrigin({self.primaries()!r}, port={self.origin_port}),
                                          standby={standby},
                                          cache=[CacheRule(prefix="/bypass/", ttl=0)])]
                        """))
                env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
                self.start("0", cdn_argv(work, os.path.join(work, "site.py"),
                                         f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                                         logfile=os.path.join(work, "twistd.log")), env=env)
            else:
                with open(os.path.join(work, "nginx-proxy.conf"), "w") as f:
                    f.write(proxy_conf(work, port, self.origin_port, self.primaries(),
                                       not args.no_standby))
                self.start("0", ["nginx", "-c", os.path.join(work, "nginx-proxy.conf"),
                                 "-g", "daemon off;"])
            wait_port(port)
            for path in self.paths():  # each object answers, from a primary
                status, data = get(port, path)
                assert status == 200 and data.split(b" ")[0] in (b"p1", b"p2"), (server, path, status,
                                                                                 data[:60])
            wrk = subprocess.Popen(
                pinned("1", ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s",
                             "--timeout", f"{args.timeout:g}s", "-s", self.lua, "-H", f"Host: {HOST}",
                             f"http://127.0.0.1:{port}/"]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(args.seconds * args.fault_at)
                self.fault(scenario, origins)
                out, err = wrk.communicate(timeout=args.seconds + 60)
            finally:
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait()
            res = parse_wrk(out)
            res["samples"] = [line for line in err.splitlines() if line.startswith("bad answer")]
            if not res["requests"]:
                raise RuntimeError(f"wrk failed: {out.strip()[:300]} {err.strip()[:300]}")
        finally:
            self.stop()
        if server == "cdnpull":
            res["log"] = self.cdn_logs()
        else:
            res["log"] = self.nginx_log()
        return res

    def primaries(self) -> list[str]:
        return [ip for _, ip in ORIGINS[:self.args.primaries]]

    def paths(self) -> list[str]:
        paths = ["/nostore/obj", "/bypass/obj"]
        return paths + ["/cache/obj"] if self.args.cacheable else paths

    def stop(self) -> None:
        """Stop the server, then the origins (so no origin goes away under
        requests the server still has in flight when wrk ends)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                # nginx: SIGQUIT is graceful (its SIGTERM drops connections)
                p.send_signal(signal.SIGTERM if "twistd" in " ".join(map(str, p.args)) else signal.SIGQUIT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def cdn_logs(self) -> list[str]:
        """Access-log answers by (status, cache, group), and the twistd log's
        warnings (the first of each kind)."""
        counts: collections.Counter = collections.Counter()
        try:
            with open(os.path.join(self.work, "access.log")) as f:
                for line in f:
                    m = re.search(r'" (\d{3}) .* cache=(\S+) group=(\S+)', line)
                    if m:
                        counts[m.groups()] += 1
        except OSError:
            pass
        lines = ["access log: " + ", ".join(f"{n} x {s} {c} {g}" for (s, c, g), n in
                                            sorted(counts.items(), key=lambda kv: -kv[1]))]
        seen: collections.Counter = collections.Counter()
        first: dict = {}
        logs = sorted((n for n in os.listdir(self.work) if n.startswith("twistd.log")), reverse=True)
        for name in logs:  # (twistd rotates its log every MB)
            with open(os.path.join(self.work, name)) as f:
                for line in f:
                    if "cdnpull.access" in line or "Log opened" in line:
                        continue
                    text = line.split("] ", 1)[-1].strip()
                    kind = re.sub(r"\d+(\.\d+)*", "N", text)[:70]
                    kind = re.sub(r"for GET /\S+", "for GET …", kind)
                    if any(w in text for w in ("Traceback", "Unhandled", "rror", "no origin",
                                               "failing over", "cut short", "block")):
                        seen[kind] += 1
                        first.setdefault(kind, text[:200])
        for kind, n in seen.most_common(6):
            lines.append(f"twistd log: {n} x {first[kind]}")
        return lines

    def nginx_log(self) -> list[str]:
        seen: collections.Counter = collections.Counter()
        try:
            with open(os.path.join(self.work, "nginx-proxy-error.log")) as f:
                for line in f:
                    m = re.search(r"\[(\w+)\] \S+ (?:\*\d+ )?(.*?)(, client|$)", line)
                    if m:
                        seen[f"[{m.group(1)}] {m.group(2)[:90]}"] += 1
            os.remove(os.path.join(self.work, "nginx-proxy-error.log"))
        except OSError:
            pass
        return [f"nginx error log: {n} x {k}" for k, n in seen.most_common(4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--timeout", type=int, default=2, help="wrk's --timeout (s)")
    ap.add_argument("--fault-at", type=float, default=0.5, help="fraction of the run")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--scenarios", default="none,kill,503,404",
                    help=f"comma-separated, of {', '.join(SCENARIOS)}")
    ap.add_argument("--servers", default="cdnpull,nginx")
    ap.add_argument("--cacheable", action="store_true", help="also ask for a max-age=1 object")
    ap.add_argument("--size", type=int, default=1024, help="object size in bytes")
    ap.add_argument("--primaries", type=int, choices=(1, 2), default=2,
                    help="primary origin IPs (1: only 127.0.0.2)")
    ap.add_argument("--no-standby", action="store_true", help="no standby (nginx: no backup server)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}: one of {', '.join(SCENARIOS)}")

    work = tempfile.mkdtemp(prefix="cdnpull-failover-")
    os.chmod(work, 0o755)  # nginx workers may run as another user
    origin_port = shared_port(*(ip for _, ip in ORIGINS))  # (one port on every origin IP)
    paths = ["/nostore/obj", "/bypass/obj"] + (["/cache/obj"] if args.cacheable else [])
    for label, ip in ORIGINS:
        for path in paths:
            name = os.path.join(work, f"www-{label}", path.lstrip("/"))
            os.makedirs(os.path.dirname(name), exist_ok=True)
            with open(name, "wb") as f:
                f.write(body(label, path, args.size))
        with open(os.path.join(work, f"www-{label}", "index.html"), "w") as f:
            f.write("ok\n")
        with open(os.path.join(work, f"nginx-{label}.conf"), "w") as f:
            f.write(origin_conf(work, label, ip, origin_port))
    lua = os.path.join(work, "check.lua")
    with open(lua, "w") as f:
        f.write(LUA % {"size": args.size,
                       "labels": ", ".join(f'"{label}"' for label, _ in ORIGINS),
                       "paths": ", ".join(f'"{p}"' for p in paths)})

    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {nginx_v}")
    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s --timeout {args.timeout:g}s (keep-alive), "
          f"fault at {args.fault_at:.0%} of the run; paths {' '.join(paths)} ({args.size} B); "
          f"server on core 0, wrk and origins on core 1")
    print(f"primaries {' '.join(ip for _, ip in ORIGINS[:args.primaries])}, "
          f"standby {'none' if args.no_standby else '127.0.0.4'}")
    results: dict = {}
    loads: list[float] = []
    runner = Run(args, work, origin_port, lua)
    try:
        for rnd in range(args.rounds):
            for scenario in scenarios:
                for server in servers:
                    loads.append(max(busy()))
                    r = runner.run(server, scenario)
                    results.setdefault((scenario, server), []).append(r)
                    served = " ".join(f"{k}={v}" for k, v in r["served"].items())
                    print(f"\n[{scenario} / {server}] {r['requests']} requests, {r['rps']:.0f} req/s, "
                          f"errors {errors_of(r)} (non-2xx {r['non2xx']}, socket c/r/w/t "
                          f"{r['connect']}/{r['read']}/{r['write']}/{r['timeout']}, bad bodies "
                          f"{r['bad']}); 200s from {served}"
                          + (f" ({r['carried']} of them after a body cut short: wrk hands its bytes "
                             f"over with the next body)" if r["carried"] else ""), flush=True)
                    for line in r["samples"] + r["log"]:
                        print(f"    {line}", flush=True)
    finally:
        runner.stop()
        if args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nbusiest core before a run: median {statistics.median(loads):.0%}, max {max(loads):.0%} "
          f"(other work on the machine); req/s: median of {args.rounds} round(s), the rest summed")
    print(f"{'scenario':9s} {'server':8s} {'req/s':>7s} {'requests':>9s} {'errors':>7s} "
          f"{'non-2xx':>8s} {'sock c/r/w/t':>13s} {'bad body':>9s}  200s from p1/p2/standby  "
          f"req/s min-max")
    for scenario in scenarios:
        for server in servers:
            rs = results.get((scenario, server), [])
            if not rs:
                continue
            rps = statistics.median(r["rps"] for r in rs)
            tot = lambda k: sum(r[k] for r in rs)  # noqa: E731
            served = "/".join(str(sum(r["served"].get(label, 0) for r in rs)) for label, _ in ORIGINS)
            sock = f"{tot('connect')}/{tot('read')}/{tot('write')}/{tot('timeout')}"
            print(f"{scenario:9s} {server:8s} {rps:7.0f} {tot('requests'):9d} "
                  f"{sum(errors_of(r) for r in rs):7d} {tot('non2xx'):8d} {sock:>13s} "
                  f"{tot('bad'):9d}  {served:22s} {min(r['rps'] for r in rs):.0f}-"
                  f"{max(r['rps'] for r in rs):.0f}")


if __name__ == "__main__":
    main()
