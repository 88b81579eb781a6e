"""Campaigns on the web side: creating them, controlling them, and the operator pages.

``pages`` holds the operator pages' blueprint (``/campaigns``); ``creation``,
``recipients`` and ``control`` are shared with ``/api/campaigns``.
"""
