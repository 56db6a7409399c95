"""Starting roles as child processes: the environment that hands a child this command's settings.

Shared by ``dev`` (the one-machine stack) and ``rebuild`` (its replay workers), so neither imports the other.
"""

from __future__ import annotations

import os

from streams import config


def child_env(settings: config.Settings) -> dict[str, str]:
    """The environment that gives a child exactly this command's settings (secrets included, never printed)."""
    env = dict(os.environ)
    for s in config.SETTINGS:
        value = getattr(settings, s.field)
        if value is None:
            env.pop(s.env, None)
            continue
        env[s.env] = value.reveal() if isinstance(value, config.Secret) else str(value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
