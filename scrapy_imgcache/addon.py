"""One-line activation: ``ADDONS = {"scrapy_imgcache.Addon": 0}``."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: where the components go; the middleware sits below HttpCompressionMiddleware (590) so it
#: sees decompressed bodies, and above the downloader-side built-ins it must not bypass
PIPELINE_PRIORITY = 1
MIDDLEWARE_PRIORITY = 585


class Addon:
    """Enables :class:`ImgCachePipeline` and :class:`ImgCacheMiddleware` where the project has
    not configured them itself: a project that lists either (a subclass of the pipeline, say,
    or the component set to ``None``) keeps exactly what it listed."""

    def update_settings(self, settings: Any) -> None:
        from scrapy.settings import BaseSettings

        from .config import enabled
        from .middleware import ImgCacheMiddleware
        from .pipelines import ImgCachePipeline

        if not enabled(settings):
            if not _configured(settings.getdict("ITEM_PIPELINES"), ImgCachePipeline, enabled_only=True):
                logger.info("imgcache: IMGCACHE_ENABLED is False; the image cache is off")
            # (else the project's own pipeline says it, as it runs as Scrapy's ImagesPipeline)
            return
        assert isinstance(settings, BaseSettings)
        for name, component, priority in (
            ("ITEM_PIPELINES", ImgCachePipeline, PIPELINE_PRIORITY),
            ("DOWNLOADER_MIDDLEWARES", ImgCacheMiddleware, MIDDLEWARE_PRIORITY),
        ):
            if not _configured(settings.getdict(name), component):
                settings.set_in_component_priority_dict(name, component, priority)


def _configured(components: dict[Any, Any], base: type, enabled_only: bool = False) -> bool:
    """Whether ``components`` lists ``base`` or a subclass of it, under any priority or ``None``
    (``enabled_only``: under a priority)."""
    from scrapy.utils.misc import load_object

    for key, priority in components.items():
        if enabled_only and priority is None:
            continue
        try:
            found = load_object(key) if isinstance(key, str) else key
        except (ImportError, NameError, ValueError):
            continue  # Scrapy reports what it cannot load
        if isinstance(found, type) and issubclass(found, base):
            return True
    return False
