from . import IndexSpider


class BlogSpider(IndexSpider):
    """A blog that reuses the shop's photos (as blogs do): one item per post."""

    name = "blog"
    index_path = "/blog/"
    link_css = "a.post"
