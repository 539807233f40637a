"""
What the benchmark scripts share: free ports, waiting for a listener,
nginx configuration and start, pinning to a core, RSS, stopping processes.

The scripts import it as ``from common import ...`` (each puts bench/ on
sys.path first), so they still run as ``python bench/NAME.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def shared_port(*ips: str) -> int:
    """A port that is free on every one of C{ips}."""
    for _ in range(50):
        port = free_port(ips[0])
        socks = []
        try:
            for ip in ips:
                s = socket.socket()
                s.bind((ip, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no shared free port")


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def rss_kib(pid: int) -> int:
    """The resident set of a process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cdn_argv(work: str, config: str, listen: str, admin: str = "none",
             logfile: str | None = None) -> list[str]:
    """twistd running cdnpull in the foreground: the config module C{config},
    one C{listen} endpoint, the C{admin} one, the state file in C{work};
    its log to C{logfile}, else to stdout."""
    return [TWISTD, "-n", "--pidfile=", *([f"--logfile={logfile}"] if logfile else []), "cdnpull",
            "--config", config, "--listen", listen, "--admin", admin,
            "--state", os.path.join(work, "state.json")]


def pinned(core: str | None, argv: list[str]) -> list[str]:
    """C{argv} run on one CPU core (taskset), or as it is when C{core} is None."""
    return ["taskset", "-c", core, *argv] if core is not None else argv


def nginx_conf(work: str, servers: str, cache: bool = True) -> str:
    """An nginx.conf with one worker, its logs and temporary files in C{work},
    a proxy cache zone C{c} (with C{cache}) and C{servers} in the http block."""
    zone = f"proxy_cache_path {work}/nginx-cache keys_zone=c:10m max_size=1g;\n" if cache else ""
    return (f"worker_processes 1;\n"
            f"error_log {work}/nginx-error.log;\n"
            f"pid {work}/nginx.pid;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{\n"
            f"access_log off;\n"
            f"{zone}"
            f"client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;\n"
            f"fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp;\n"
            f"scgi_temp_path {work}/tmp;\n"
            f"{textwrap.dedent(servers).strip()}\n"
            f"}}\n")


def start_nginx(conf: str, core: str | None = None) -> subprocess.Popen:
    """nginx in the foreground with the configuration file C{conf}."""
    return subprocess.Popen(pinned(core, ["nginx", "-c", conf, "-g", "daemon off;"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM all of C{procs}, then wait for each (SIGKILL after 10 s)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all(cdn: subprocess.Popen, nginx: subprocess.Popen, work: str) -> None:
    """Stop the twistd and nginx of a benchmark and remove its directory."""
    cdn.send_signal(signal.SIGTERM)
    nginx.send_signal(signal.SIGQUIT)  # graceful: nginx's SIGTERM drops connections
    cdn.wait(10)
    nginx.wait(10)
    shutil.rmtree(work, ignore_errors=True)
