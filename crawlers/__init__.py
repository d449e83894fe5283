"""The crawl stage: a Scrapy project that stores raw HTML pages and a crawl manifest."""
