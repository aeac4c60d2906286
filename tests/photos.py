"""Test photographs: the same reproducible set the demo uses (see example_project/photos.py)."""

from example_project.photos import *  # noqa: F401,F403
from example_project.photos import PHOTO_NAMES, distinct_images, distinct_jpegs, encode, near_duplicates  # noqa: F401
