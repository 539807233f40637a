"""
The demo: one accelerated domain, www.test.com, with two primary origins and a
hot standby, all started by this file on loopback so that nothing else is
needed:

    twistd -n cdnpull --config examples/demo.py
    curl -i -H 'Host: www.test.com' http://localhost:8080/1.jpg

The primaries (127.0.0.2 and 127.0.0.3, port 8001) do not have /1.jpg and
answer 404; the standby (127.0.0.4:8001) has it, so the client gets the
standby's image: the classic hot-standby case.  Every sample origin says who
it is in an X-Served-By header.
"""

import base64

from cdnpull.config import CacheRule, Domain, IPOrigin, Probe, Settings

settings = Settings(listen=["tcp:8080"], admin="tcp:8081:interface=127.0.0.1")

domains = [
    Domain(
        "www.test.com",
        origin=IPOrigin(["127.0.0.2", "127.0.0.3"], port=8001),
        standby=IPOrigin(["127.0.0.4"], port=8001),
        probe=Probe(path="/", interval=5.0, timeout=3.0, block_for=60.0),
        cache=[CacheRule(suffixes=[".jpg", ".png"], ttl=86400)],
    ),
]

# -- the sample origins (not part of a real site's config) ----------------

STANDBY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAoHBwgHBgoICAgLCgoLDhgQDg0NDh0VFhEYIx8lJCIf"
    "IiEmKzcvJik0KSEiMEExNDk7Pj4+JS5ESUM8SDc9Pjv/2wBDAQoLCw4NDhwQEBw7KCIoOzs7Ozs7"
    "Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozv/wAARCAAYADADASIA"
    "AhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQA"
    "AAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3"
    "ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWm"
    "p6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEA"
    "AwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSEx"
    "BhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElK"
    "U1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3"
    "uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDNoro9"
    "Fsrcpp9y1opIuI98khbDZl28YO08fwnB4zyOKemjW5FiZ7LymkvLeNwC+GWTcWXJPbAHHI6Ek19I"
    "60U2j59UZNJnM0Vt29pa3dmLqKxBl/eqluruRKV8vHfOcOx4I+7V+4gZ1vI1077QVNj+43N8n7hh"
    "1Bzx0odZLp/V7AqTfU5WitjUrKwt7eW4tsPGz+TEdxPzKx3N7/KFPp+8rHrSMlJXRnKLi7MKKKKo"
    "kKKKKAJJJ5JIo4mYbI87VCgYz1PHU9OT6Co6KKBn/9k="
)

PRIMARY_FILES = {
    "/": b"<h1>www.test.com</h1><p>served by a primary origin</p>\n",
    "/hello.txt": b"hello from the primary\n",
}
STANDBY_FILES = {
    "/": b"<h1>www.test.com</h1><p>served by the standby origin</p>\n",
    "/hello.txt": b"hello from the standby\n",
    "/1.jpg": STANDBY_JPEG,
}
TYPES = {".jpg": b"image/jpeg", ".txt": b"text/plain", "/": b"text/html"}


def services(reactor):
    """Start the sample origins with the node (a hook cdnpull calls)."""
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Origin(Resource):
        isLeaf = True

        def __init__(self, name, files):
            super().__init__()
            self.name, self.files = name, files

        def render(self, request):
            request.setHeader(b"x-served-by", self.name.encode())
            path = request.path.decode("utf-8", "replace")
            body = self.files.get(path)
            if body is None:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"text/plain")
                return b"404 not found on " + self.name.encode() + b"\n"
            kind = next((t for s, t in TYPES.items() if path.endswith(s)), b"text/plain")
            request.setHeader(b"content-type", kind)
            if request.method == b"HEAD":  # the node's health probes
                request.setHeader(b"content-length", b"%d" % len(body))
                return b""
            return body

    out = []
    for ip, name, files in [
        ("127.0.0.2", "primary-127.0.0.2", PRIMARY_FILES),
        ("127.0.0.3", "primary-127.0.0.3", PRIMARY_FILES),
        ("127.0.0.4", "standby-127.0.0.4", STANDBY_FILES),
    ]:
        site = Site(Origin(name, files), reactor=reactor)
        site.log = lambda request: None
        endpoint = TCP4ServerEndpoint(reactor, 8001, interface=ip)
        out.append(StreamServerEndpointService(endpoint, site))
    return out
