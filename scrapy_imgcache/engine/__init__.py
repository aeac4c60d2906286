"""The cache's per-image work, out of the crawl process (see :mod:`.client` and :mod:`.service`)."""
