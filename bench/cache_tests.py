"""
Run the public HTTP caching test suite (https://cache-tests.fyi, source
https://github.com/http-tests/cache-tests) against a real twistd cdnpull and
print the score the way the site counts it.

Everything runs on 127.0.0.1: the suite's own origin server (node, port
8000 by default), a cdnpull node in front of it (domain "localhost", origin
127.0.0.1:8000, nothing else configured), and the suite's command-line
client talking to the node.

    git clone https://github.com/http-tests/cache-tests /tmp/cache-tests
    python bench/cache_tests.py /tmp/cache-tests [--id TEST-ID] [--json out.json]

The checkout's npm dependencies are installed (npm install) when missing.
With --id, one test runs and the suite's own explanation is printed.

Scoring (as test-engine/lib/results.mjs on the site): a test whose
depends_on did not pass counts as neither; setup and harness failures count
as neither; "required" (or no kind) tests are passed or failed; "optimal"
ones are passed or "not optimal"; "check" ones are informational.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, cdn_argv, free_port, stop, wait_port  # noqa: E402

CONFIG = """
from cdnpull.config import Domain, IPOrigin, Settings

settings = Settings(cache_memory="64MiB")
domains = [Domain("localhost", origin=IPOrigin(["127.0.0.1"], port={origin_port}))]
"""

# The suite's server listens on every interface; keep it on loopback.
LOOPBACK = """
import net from 'net'
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number' || typeof port === 'string') return listen.call(this, port, '127.0.0.1', ...rest)
  return listen.call(this, port, ...rest)
}
"""

# Reads the suite's test list (ids, kind, depends_on) for scoring.
META = """
import tests from './tests/index.mjs'
const out = {}
for (const suite of tests) for (const t of suite.tests) {
  out[t.id] = {kind: t.kind || 'required', depends_on: t.depends_on || [], suite: suite.id,
               name: t.name}
}
console.log(JSON.stringify(out))
"""


PASS = ("pass", "yes")


def classify(tid: str, meta: dict, results: dict, honor: bool = True) -> str:
    """test-engine/lib/results.mjs determineTestResult, in Python."""
    test = meta[tid]
    result = results.get(tid)
    if result is None:
        return "untested"
    if honor:
        for dep in test["depends_on"]:
            if classify(dep, meta, results) not in PASS:
                return "dependency_fail"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
    if isinstance(result, list) and result and result[0] == "AbortError":
        return "harness_fail"
    kind = test["kind"]
    if kind == "required":
        return "pass" if result is True else "fail"
    if kind == "optimal":
        return "pass" if result is True else "optional_fail"
    return "yes" if result is True else "no"


def score(meta: dict, results: dict) -> dict:
    out: dict = {}
    for tid, test in meta.items():
        out.setdefault((test["kind"], classify(tid, meta, results)), []).append(tid)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="a checkout of github.com/http-tests/cache-tests")
    parser.add_argument("--id", default="", help="run one test and show its details")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--origin-port", type=int, default=0)
    args = parser.parse_args()
    suite = os.path.abspath(args.suite)
    if not os.path.exists(os.path.join(suite, "tests", "index.mjs")):
        raise SystemExit(f"{suite} is not a cache-tests checkout")
    if not os.path.isdir(os.path.join(suite, "node_modules")):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=suite,
                       check=True)
    origin_port = args.origin_port or free_port()
    cdn_port = free_port()
    work = tempfile.mkdtemp(prefix="cache-tests-")
    config = os.path.join(work, "config.py")
    with open(config, "w") as f:
        f.write(textwrap.dedent(CONFIG.format(origin_port=origin_port)))
    procs = []
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        loopback = os.path.join(work, "loopback.mjs")
        with open(loopback, "w") as f:
            f.write(LOOPBACK)
        origin_log = open(os.path.join(work, "origin.log"), "w")
        procs.append(subprocess.Popen(
            ["node", "--import", "file://" + loopback, "test-engine/server/server.mjs"], cwd=suite, stdout=origin_log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, npm_config_port=str(origin_port), npm_config_protocol="http",
                     npm_config_pidfile=os.path.join(work, "origin.pid"))))
        cdn_log = open(os.path.join(work, "twistd.log"), "w")
        procs.append(subprocess.Popen(
            cdn_argv(work, config, f"tcp:{cdn_port}:interface=127.0.0.1"),
            cwd=work, stdout=cdn_log, stderr=subprocess.STDOUT, env=env))
        wait_port(origin_port)
        wait_port(cdn_port)
        cli_env = dict(os.environ, npm_config_base=f"http://localhost:{cdn_port}",
                       npm_config_id=args.id, npm_package_config_id=args.id)
        run = subprocess.run(["node", "--no-warnings", "test-engine/cli.mjs"], cwd=suite,
                             env=cli_env, capture_output=True, text=True, timeout=1800)
        if args.id:
            sys.stdout.write(run.stdout + run.stderr)
            return 0
        if run.returncode != 0:
            sys.stderr.write(run.stderr)
            raise SystemExit("the suite's client failed")
        results = json.loads(run.stdout)
    finally:
        stop(procs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    meta = json.loads(subprocess.run(["node", "--input-type=module", "-e", META], cwd=suite,
                                     capture_output=True, text=True, check=True).stdout)
    counts = score(meta, results)

    def ids(kind: str, outcome: str) -> list:
        return sorted(counts.get((kind, outcome), []))

    print(f"cache-tests against cdnpull ({len(meta)} tests; logs in {work})")
    print(f"required: {len(ids('required', 'pass'))} passed, {len(ids('required', 'fail'))} failed")
    print(f"optimal:  {len(ids('optimal', 'pass'))} passed, "
          f"{len(ids('optimal', 'optional_fail'))} not optimal")
    other = {k: len(v) for k, v in counts.items() if k[1] not in ("pass", "fail", "optional_fail")
             and k[0] != "check"}
    print("neither:  " + ", ".join(f"{k[0]} {k[1]} {n}" for k, n in sorted(other.items())))
    for tid in ids("required", "fail"):
        print(f"  FAIL {tid}: {meta[tid]['name']}  ({results.get(tid)})")
    for tid in ids("optimal", "optional_fail"):
        print(f"  not optimal {tid}: {meta[tid]['name']}")
    for kind, outcome in sorted(counts):
        if outcome in ("dependency_fail", "setup_fail", "harness_fail", "retry") and kind != "check":
            for tid in sorted(counts[(kind, outcome)]):
                print(f"  {outcome} ({kind}) {tid}: {meta[tid]['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
