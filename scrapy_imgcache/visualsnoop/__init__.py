"""VisualSnoop collections over the shared cache: a self-hosted stand-in for the service the
published ``visualsnoop==0.2`` client spoke to (docs/visualsnoop.md).

A separable part: it builds on ``store/`` (a collection's images are a bucket's) and nothing
else of the package builds on it, except the two front ends that mount it —
``server/cli.py`` (the ``/api/v1`` routes, ``imgcache-server collections``) and the
``scrapy imgcache-collections`` entry point (:mod:`.command`).

- :mod:`.keys`: key pairs, and the secrets sealed for the database (:class:`SecretBox`)
- :mod:`.models`: its tables
- :mod:`.registry`: the collections and their keys (create, list, rotate, delete)
- :mod:`.images`: one collection's images: ids, listing, search, add, delete, under a lock
- :mod:`.api`: the HTTP routes and the client's ``VSHMAC`` authentication
- :mod:`.cli`, :mod:`.command`: the ``collections`` subcommands of both command lines

Nothing is imported here: ``scrapy --help`` loads :mod:`.command` to list it.
"""
