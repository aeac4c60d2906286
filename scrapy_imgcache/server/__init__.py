"""The imgcache REST service (``pip install 'scrapy-imgcache[server]'``).

``create_app(store)`` builds the ASGI app; ``imgcache-server`` and ``scrapy imgcache-serve``
run it with uvicorn. See docs/server.md.
"""
