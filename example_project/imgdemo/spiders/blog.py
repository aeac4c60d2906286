import scrapy


class BlogSpider(scrapy.Spider):
    """A blog that reuses the shop's photos (as blogs do): one item per post."""

    name = "blog"

    async def start(self):
        yield scrapy.Request(self.settings["IMGDEMO_SITE"] + "/blog/")

    def parse(self, response):
        yield from response.follow_all(css="a.post", callback=self.parse_post)

    def parse_post(self, response):
        yield {
            "title": response.css("h1::text").get(),
            "url": response.url,
            "image_urls": [response.urljoin(src) for src in response.css("img::attr(src)").getall()],
        }
