"""``enx-streams status``: the health of the whole pipeline. :mod:`gather` reads (every read bounded by a
timeout), :mod:`judge` decides (pure), :mod:`render` shows (a table with the verdict first, or JSON)."""
