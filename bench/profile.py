"""
Where a cdnpull process spends its time under load: wrk on one path for a
few seconds while py-spy samples the twistd process; prints the frames with
the most samples of their own (self) and in all (inclusive).

Needs nginx, wrk and py-spy (pip install py-spy):

    python bench/profile.py /1k.bin          # a 1 KiB memory hit
    python bench/profile.py /nostore/1k.bin  # the miss path
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (cdn_argv, free_port, nginx_conf, pinned, start_nginx, stop,  # noqa: E402
                    wait_port)
from speed import HOST, get  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--access-log", default="file", choices=("file", "event", "off"))
    ap.add_argument("--keep", help="also copy py-spy's raw stacks (with line numbers) here")
    ap.add_argument("--cpu", action="store_true",
                    help="no py-spy: the node's CPU time per request (user + system, from "
                         "/proc), which other work on the machine moves far less than req/s")
    ap.add_argument("--calls", action="store_true",
                    help="no py-spy: run the node under cProfile (twistd --profiler=cprofile) and "
                         "print the functions by own time, with their calls per request (cProfile "
                         "slows everything, so read the call counts more than the times)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cdnpull-profile-")
    os.chmod(work, 0o755)
    www = os.path.join(work, "www")
    os.makedirs(os.path.join(www, "nostore"))
    for name, size in (("1k.bin", 1024), ("100k.bin", 100 * 1024), ("nostore/1k.bin", 1024)):
        with open(os.path.join(www, name), "wb") as f:
            f.write(os.urandom(size))
    origin_port, cdn_port = free_port("127.0.0.2"), free_port()
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(nginx_conf(work, f"""
                server {{
                    listen 127.0.0.2:{origin_port} backlog=1024;
                    root {www};
                    location / {{ add_header Cache-Control "max-age=3600"; }}
                    location /nostore/ {{ add_header Cache-Control "no-store"; }}
                }}
            """, cache=False))
    access_log = {"file": repr(os.path.join(work, "access.log")), "event": "None", "off": '"off"'}[args.access_log]
    with open(os.path.join(work, "site.py"), "w") as f:
        f.write(textwrap.dedent(f"""
            from cdnpull.config import Domain, IPOrigin, Settings
            settings = Settings(access_log={access_log})
            domains = [Domain("{HOST}", origin=IPOrigin(["127.0.0.2:{origin_port}"]), probe=None)]
            """))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    nginx = start_nginx(os.path.join(work, "nginx.conf"), core="1")
    argv = cdn_argv(work, os.path.join(work, "site.py"),
                    f"tcp:{cdn_port}:interface=127.0.0.1:backlog=1024",
                    logfile=os.path.join(work, "twistd.log"))
    stats = os.path.join(work, "cprofile.stats")
    if args.calls:
        argv[1:1] = [f"--profile={stats}", "--profiler=cprofile", "--savestats"]
    cdn = subprocess.Popen(pinned("0", argv), env=env, cwd=work,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = os.path.join(work, "stacks.txt")
    try:
        wait_port(origin_port, "127.0.0.2")
        wait_port(cdn_port)
        get(cdn_port, args.path)
        get(cdn_port, args.path)
        if args.cpu:
            print(cpu_per_request(cdn.pid, cdn_port, args.path, args.seconds))
            return
        if args.calls:
            line = cpu_per_request(cdn.pid, cdn_port, args.path, args.seconds)
            print(line + " (under cProfile)")
            cdn.send_signal(signal.SIGTERM)
            cdn.wait(30)
            calls_report(stats, int(line.split()[1]) + 2, args.top)
            return
        load = subprocess.Popen(pinned("1", ["wrk", "-t1", "-c50", f"-d{args.seconds + 2}s", "-H",
                                             f"Host: {HOST}", f"http://127.0.0.1:{cdn_port}{args.path}"]),
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        subprocess.run(["py-spy", "record", "--format", "raw", "-o", raw, "-d", str(args.seconds),
                        "-r", "200", "-p", str(cdn.pid)], capture_output=True)
        out = load.communicate()[0]
        rps = [line for line in out.splitlines() if "Requests/sec" in line]
        print(f"{args.path}: {rps[0].strip() if rps else '?'} while sampled (py-spy adds overhead)")
    finally:
        stop([cdn, nginx])
    try:
        if args.keep:
            shutil.copy(raw, args.keep)
        report(raw, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) CPU ticks of process C{pid}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def cpu_per_request(pid: int, port: int, path: str, seconds: int) -> str:
    user0, sys0 = _cpu_ticks(pid)
    out = subprocess.run(pinned("1", ["wrk", "-t1", "-c50", f"-d{seconds}s",
                                      "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True).stdout
    user1, sys1 = _cpu_ticks(pid)
    tick = os.sysconf("SC_CLK_TCK")
    user, system = (user1 - user0) / tick, (sys1 - sys0) / tick
    used = user + system
    done = [line for line in out.splitlines() if "requests in" in line]
    errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    n = int(done[0].split()[0]) if done else 0
    per = (f"{used / n * 1e6:.0f} us per request ({user / n * 1e6:.0f} user, "
           f"{system / n * 1e6:.0f} system)") if n else "?"
    return f"{path}: {n} requests, node CPU {used:.2f} s, {per} {' '.join(errors)}"


def calls_report(stats: str, requests: int, top: int) -> None:
    """cProfile's functions by own time, with calls per request."""
    import pstats

    table = pstats.Stats(stats).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values())
    calls = sum(row[1] for row in table.values())
    print(f"\n{calls / requests:.0f} function calls per request; by own time:")
    print("   own  calls/req  function")
    rows = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)
    for (path, line, name), (_, ncalls, own, _, _) in rows[:top]:
        print(f"  {100 * own / total:4.1f}%  {ncalls / requests:9.2f}  {name} "
              f"({os.path.basename(path)}:{line})")


def report(raw: str, top: int) -> None:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = [fr.split(" (")[0] + " (" + os.path.basename(fr.split(" (")[1].split(":")[0]) + ")"
                      if " (" in fr else fr for fr in stack.split(";")]
            samples += n
            own[frames[-1]] += n
            for fr in set(frames):
                total[fr] += n
    print(f"\n{samples} samples; self time:")
    for fr, n in own.most_common(top):
        print(f"  {100 * n / samples:5.1f}%  {fr}")
    print("\ninclusive time:")
    for fr, n in total.most_common(top + 25):
        print(f"  {100 * n / samples:5.1f}%  {fr}")


if __name__ == "__main__":
    main()
