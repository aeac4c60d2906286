import scrapy


class ShopSpider(scrapy.Spider):
    """A shop catalogue: one item per product page, with its photos in ``image_urls``."""

    name = "shop"

    async def start(self):
        yield scrapy.Request(self.settings["IMGDEMO_SITE"] + "/shop/")

    def parse(self, response):
        yield from response.follow_all(css="a.product", callback=self.parse_product)

    def parse_product(self, response):
        yield {
            "name": response.css("h1::text").get(),
            "url": response.url,
            "image_urls": [response.urljoin(src) for src in response.css("img::attr(src)").getall()],
        }
