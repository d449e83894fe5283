"""Scrapy's AutoThrottle for remote hosts only: a folder served on this machine keeps its download slot
without delay (AutoThrottle would raise every slot's delay to DOWNLOAD_DELAY at least, robots.txt
requests included)."""
from __future__ import annotations

from scrapy.extensions.throttle import AutoThrottle

from crawlers.config import LOCAL_HOSTS


class RemoteAutoThrottle(AutoThrottle):
    def _get_slot(self, request, spider):
        key, slot = super()._get_slot(request, spider)
        return (key, None) if key in LOCAL_HOSTS else (key, slot)
