"""
The Twisted peers that bench/speed.py measures cdnpull against, each a
plain twisted.web server with no access log (their best case):

    python bench/twisted_peers.py static DIR PORT          # static.File
    python bench/twisted_peers.py proxy HOST:PORT PORT      # ReverseProxyResource
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site
from twisted.web.static import File


def main() -> None:
    kind, what, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "static":
        resource = File(what)
    else:
        host, _, oport = what.rpartition(":")
        resource = ReverseProxyResource(host, int(oport), b"")
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
