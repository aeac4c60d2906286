"""The demo's spiders: a shop and a blog, both an index page linking to item pages."""

from __future__ import annotations

import scrapy


class IndexSpider(scrapy.Spider):
    """Follows ``link_css`` links from ``IMGDEMO_SITE + index_path``; one item per page with its images."""

    index_path = "/"
    link_css = "a"

    async def start(self):
        yield scrapy.Request(self.settings["IMGDEMO_SITE"] + self.index_path)

    def parse(self, response):
        yield from response.follow_all(css=self.link_css, callback=self.parse_page)

    def parse_page(self, response):
        yield {
            "title": response.css("h1::text").get(),
            "url": response.url,
            "image_urls": [response.urljoin(src) for src in response.css("img::attr(src)").getall()],
        }
