"""Scrapy settings for the memlm crawler (also used by `scrapy crawl site` run by hand)."""

BOT_NAME = "memlm"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

USER_AGENT = "memlm (+https://github.com/memlm/memlm)"
# With the HTTP cache on, max-age=0 makes every cached page revalidate (a conditional request)
# instead of being trusted for a heuristic tenth of its age.
DEFAULT_REQUEST_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en",
    "Cache-Control": "max-age=0",
}
ROBOTSTXT_OBEY = True
# Scrapy 2.19 opens a remote-control port by default; a crawler has no use for it.
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False

CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 16
DOWNLOAD_TIMEOUT = 20
DOWNLOAD_MAXSIZE = 8 * 1024 * 1024
DOWNLOAD_WARNSIZE = 0
RETRY_TIMES = 2

# Breadth-first, so that a page limit keeps the pages closest to the start.
DEPTH_PRIORITY = 1
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"

# AutoThrottle (on when the crawl config says so) leaves 127.0.0.1 and localhost alone.
EXTENSIONS = {"scrapy.extensions.throttle.AutoThrottle": None, "crawlers.throttle.RemoteAutoThrottle": 0}
ITEM_PIPELINES = {"crawlers.pipelines.PageStorePipeline": 300}
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"

# Where the page store goes and how many pages it keeps (memlm sets both per run).
MEMLM_OUT_DIR = "runs/crawl"
MEMLM_MAX_PAGES = 600
