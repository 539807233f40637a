"""
A production-shaped config: copy it to /etc/cdnpull/site.py and edit.
Check it with `python -m cdnpull check examples/site.py`.

Every name below is importable from cdnpull.config (docs/configuration.md).
"""

from cdnpull.config import (BucketOrigin, CacheRule, Domain, DomainOrigin, IPOrigin, Probe,  # noqa: F401
                            S3Credentials, Settings)

settings = Settings(
    listen=["tcp:80"],                        # add "ssl:443:privateKey=...:certKey=..." for HTTPS
    admin="tcp:8081:interface=127.0.0.1",     # the API, console and /metrics: loopback only
    state_file="/var/lib/cdnpull/state.json",
    cache_memory="512MiB",
    cache_dir="/var/cache/cdnpull",
    cache_disk="20GiB",
    access_log="/var/log/cdnpull/access.log",  # reopened on SIGHUP (logrotate)
    admin_token_file=None,                    # e.g. "/etc/cdnpull/admin.token"
)

STATIC_FILES = [CacheRule(suffixes=[".jpg", ".png", ".gif", ".webp", ".css", ".js"], ttl=86400,
                          ignore_query=True),
                CacheRule(prefix="/api/", ttl=0)]

domains = [
    # Two origin servers in rotation, a hot standby on another network.
    Domain("www.example.com",
           origin=IPOrigin(["192.0.2.10", "192.0.2.11:8080"], port=80),
           standby=IPOrigin(["198.51.100.20"], port=443, scheme="https"),
           origin_host="origin.example.com",
           probe=Probe(path="/healthz", interval=5.0, timeout=3.0, block_for=60.0),
           cache=STATIC_FILES),
    # An origin known by name, re-resolved as its DNS TTL expires.
    Domain("img.example.com",
           origin=DomainOrigin("images-origin.example.net", scheme="https")),
    # A public-read bucket.  For a private one:
    #   credentials=S3Credentials.from_env("STATIC")   # STATIC_ACCESS_KEY_ID, ...
    Domain("static.example.com",
           origin=BucketOrigin(endpoint="https://s3.eu-west-1.amazonaws.com",
                               bucket="example-static-assets", style="virtual",
                               region="eu-west-1"),
           cache=[CacheRule(prefix="/", ttl=3600)]),
    # Every subdomain not listed above.
    Domain("*.example.com", origin=IPOrigin(["192.0.2.10"], port=80), probe=None),
]
