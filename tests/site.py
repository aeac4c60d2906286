"""The counting HTTP server the demo uses, for the crawl tests (see example_project/webserver.py)."""

from example_project.webserver import Route, Site  # noqa: F401
