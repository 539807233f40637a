"""
The documentation stays complete and self-contained: every public config
field is in docs/configuration.md with its default, every metric in
docs/operations.md, every admin call in docs/admin-api.md, and no file of
the repository sends the reader outside it.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from twisted.internet.task import Clock

from cdnpull import config
from cdnpull.live import LiveTable
from cdnpull.metrics import Metrics

pytestmark = pytest.mark.timeout(30)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Settings", "Domain", "IPOrigin", "DomainOrigin", "BucketOrigin", "S3Credentials",
           "Probe", "CacheRule", "Certificate"]
# Validated as required although the dataclass has an empty default.
REQUIRED = {("IPOrigin", "addresses"), ("DomainOrigin", "host"), ("BucketOrigin", "endpoint"),
            ("BucketOrigin", "bucket"), ("Certificate", "cert_file"), ("Certificate", "key_file")}
# Filled in by the code, not by a config author.
INTERNAL = {("S3Credentials", "missing"), ("S3Credentials", "env_prefix"),
            ("S3Credentials", "name")}


def read(name: str) -> str:
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> str:
    """The text under a markdown heading naming C{title}, to the next heading of any level."""
    m = re.search(rf"(?m)^#+ `{re.escape(title)}`\n(.*?)(?=^#+ |\Z)", text, re.S)
    assert m, f"docs/configuration.md has no section for {title}"
    return m.group(1)


@pytest.mark.parametrize("name", CLASSES)
def test_every_config_field_is_documented_with_its_default(name):  # type: ignore[no-untyped-def]
    text = section(read("configuration.md"), name)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"(?m)^\| `(\w+)` \| ([^|]*) \|", text)}
    missing = [f.name for f in dataclasses.fields(getattr(config, name))
               if (name, f.name) not in INTERNAL and f.name not in rows]
    assert not missing, f"docs/configuration.md, {name}: no row for {missing}"
    for f in dataclasses.fields(getattr(config, name)):
        if (name, f.name) in INTERNAL or (name, f.name) in REQUIRED:
            continue
        default = f.default
        if isinstance(default, bool) or default is None or isinstance(default, (int, float, str)):
            shown = f'"{default}"' if isinstance(default, str) else repr(default)
            assert f"`{shown}`" in rows[f.name], (
                f"docs/configuration.md, {name}.{f.name}: default {shown} not shown")


def test_every_metric_is_documented():
    metrics = Metrics(lambda: LiveTable([]), Clock())
    names = {m.name for m in metrics.registry.collect()}
    # The cache gauges only show with a cache; they are listed all the same.
    names |= {"cdnpull_cache_bytes", "cdnpull_cache_objects"}
    text = read("operations.md")
    missing = [n for n in sorted(names) if f"`{n}" not in text]
    assert not missing, f"docs/operations.md does not describe {missing}"


def test_every_admin_call_is_documented():
    text = read("admin-api.md")
    for call in ["GET /api/domains", "GET /api/domains/{name}", "PUT /api/domains/{name}/origin",
                 "PUT /api/domains/{name}/standby", "DELETE /api/domains/{name}/standby",
                 "POST /api/domains/{name}/switch", "DELETE /api/domains/{name}/override",
                 "PUT /api/domains/{name}/certificate", "DELETE /api/domains/{name}/certificate",
                 "POST /api/purge", "GET /api/stats", "GET /metrics"]:
        assert f"`{call}`" in text, call


# Spelled in pieces so that this file does not match itself.
OUTSIDE = ("SPEC" + ".md", "SPEC" + " §", "../" + "shared", "ARCHITECTURE" + ".md")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".pytest_cache",
             ".benchmarks", "node_modules"}


def test_no_file_sends_the_reader_outside_the_repository():
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".png", ".min.js", ".pyc")):
                continue
            path = os.path.join(top, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if any(p in line for p in OUTSIDE):
                        found.append(f"{os.path.relpath(path, ROOT)}:{n}")
    assert not found, found
