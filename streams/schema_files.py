"""Where the contract's schema files are: ``schemas/`` of the repository, shipped in the wheel.

The repository keeps them in ``schemas/`` (avro/, clickhouse/); ``streams/_schemas`` is a link to it, which
the wheel carries as package data (pyproject.toml), so an installed package finds them beside its code. A
checkout without the link (an archive that dropped it) still finds ``schemas/`` beside ``streams/``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "_schemas"
REPOSITORY = Path(__file__).resolve().parents[1] / "schemas"


def schemas_dir(packaged: Path = PACKAGED, repository: Path = REPOSITORY) -> Path:
    """The directory holding ``avro/`` and ``clickhouse/``: the packaged one when present, else the repository's."""
    return packaged if (packaged / "avro").is_dir() else repository
