"""cdnpull: a CDN edge node on Twisted (see README.md and docs/)."""

__version__ = "0.1.0"
