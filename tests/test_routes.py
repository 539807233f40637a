"""The routing table holder: one assignment per swap, subscribers told in order."""

from twisted.internet.task import Clock

from cdnpull.config import Domain, IPOrigin
from cdnpull.live import Routes, build_table


def test_swap_replaces_current_and_tells_subscribers_in_order():
    clock = Clock()
    first = build_table([Domain("a.test", IPOrigin(("127.0.0.2",), port=8001))], clock)
    routes = Routes(first)
    seen = []
    routes.subscribe(lambda old, new: seen.append(("dns", old, new)))
    routes.subscribe(lambda old, new: seen.append(("probes", old, new)))
    second = build_table([Domain("b.test", IPOrigin(("127.0.0.3",), port=8001))], clock,
                         previous=first)
    routes.swap(second)
    assert routes.current is second
    assert routes.current.route("b.test") is not None and routes.current.route("a.test") is None
    assert seen == [("dns", first, second), ("probes", first, second)]
