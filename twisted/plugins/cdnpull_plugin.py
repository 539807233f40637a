from twisted.application.service import ServiceMaker

cdnpull = ServiceMaker(
    "cdnpull", "cdnpull.tap", "A CDN edge node: origin pull with failover.", "cdnpull"
)
