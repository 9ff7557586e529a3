"""``--cache``: a task's outcome stored on disk, keyed by what it depends on.

:mod:`.fingerprint` tells values apart by content; :mod:`.store` keeps signed
entries in a folder; :mod:`.outcome` computes a task's key, replays a stored
outcome and stores a new one. The scheduler calls :class:`.outcome.ResultCache`.
"""
