"""One-line activation: ``ADDONS = {"scrapy_imgcache.Addon": 0}``."""

from __future__ import annotations

from typing import Any

#: where the components go; the middleware sits below HttpCompressionMiddleware (590) so it
#: sees decompressed bodies, and above the downloader-side built-ins it must not bypass
PIPELINE_PRIORITY = 1
MIDDLEWARE_PRIORITY = 585


class Addon:
    """Enables :class:`ImgCachePipeline` and :class:`ImgCacheMiddleware` with the defaults."""

    def update_settings(self, settings: Any) -> None:
        from .middleware import ImgCacheMiddleware
        from .pipelines import ImgCachePipeline

        settings.set_in_component_priority_dict("ITEM_PIPELINES", ImgCachePipeline, PIPELINE_PRIORITY)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", ImgCacheMiddleware, MIDDLEWARE_PRIORITY)
