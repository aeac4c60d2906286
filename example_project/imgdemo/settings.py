"""The demo project's settings: scrapy-imgcache enabled the way the README tells users to."""

BOT_NAME = "imgdemo"
SPIDER_MODULES = ["imgdemo.spiders"]
ROBOTSTXT_OBEY = False
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"

# One line turns the cache on: the images pipeline and the downloader middleware.
ADDONS = {"scrapy_imgcache.Addon": 0}

# Both spiders share one cache: by default a SQLite file in this project's .scrapy/ folder
# (IMGCACHE_URL) with the image bytes beside it (IMGCACHE_FILES_STORE). Near-duplicates within
# IMGCACHE_SIMILARITY_THRESHOLD bits are stored and marked (IMGCACHE_ON_SIMILAR = "annotate").
IMGCACHE_SIMILARITY_THRESHOLD = 8

# Where the demo site runs (python -m example_project.demo starts it and sets this).
IMGDEMO_SITE = "http://127.0.0.1:8765"

EXTENSIONS = {"imgdemo.extensions.StatsToFile": 0}
