from . import IndexSpider


class ShopSpider(IndexSpider):
    """A shop catalogue: one item per product page, with its photos in ``image_urls``."""

    name = "shop"
    index_path = "/shop/"
    link_css = "a.product"
