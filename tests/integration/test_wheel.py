"""The wheel, installed for real (not editable) into a fresh venv, works from outside the repository:
its schemas come with it (``migrate`` applies the migrations, the codec encodes and decodes), and
``sql`` reads what ``migrate`` wrote (no owner runs: it opens the directory itself).

The wheel is built from a copy of the sources (no network: ``--no-build-isolation`` with the shared venv's
setuptools and wheel). The fresh venv sees the shared venv's site-packages for the dependencies through a
``.pth`` line, which does not run the shared venv's own ``.pth`` files, so the editable install of
enx-streams there stays out of it: the test checks that ``streams`` is imported from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("streams", "schemas", "pyproject.toml", "README.md")

ROUND_TRIP = """
import json, sys
import streams
from streams.avro import default_codec
from streams.events import normalise
event = normalise(b'{"type": "recording", "app_id": "a", "conf_num": "7", "trans_date": 1714559400}', 1, None)
codec = default_codec()
print(json.dumps({"module": streams.__file__, "same": codec.decode(codec.encode("WebhookEvent", event)) == event,
                  "names": codec.names}))
"""


def run(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_installed_wheel_migrates_round_trips_and_queries(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENX_") and k != "PYTHONPATH"}
    src = tmp_path / "src"
    for name in SOURCES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, src / name)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(wheels), str(src)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("enx_streams-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=tmp_path, env=env).stdout.strip())
    (site / "shared-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # the shared venv's packages
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path, env=env)

    work = tmp_path / "elsewhere"  # outside the repository and the sources
    work.mkdir()
    trip = json.loads(run([str(python), "-c", ROUND_TRIP], cwd=work, env=env).stdout)
    assert Path(trip["module"]).is_relative_to(venv), trip["module"]
    shipped = sorted(p.stem for p in (REPO / "schemas" / "avro").glob("*.avsc"))  # every record the repo defines
    assert trip["same"] and trip["names"] == shipped, (trip["names"], shipped)

    cli = venv / "bin" / "enx-streams"
    data = tmp_path / "data"
    migrated = run([str(cli), "migrate", "--data-dir", str(data)], cwd=work, env=env).stdout
    applied = sorted(p.stem for p in (REPO / "schemas" / "clickhouse").glob("*.sql"))
    assert f"applied {len(applied)} migration(s)" in migrated, migrated
    queried = run([str(cli), "sql", "--data-dir", str(data), "--format", "JSONEachRow",
                   "SELECT groupArray(name) AS names FROM (SELECT name FROM enablex.schema_migrations FINAL "
                   "ORDER BY version)"], cwd=work, env=env)
    assert json.loads(queried.stdout)["names"] == applied
    assert "opened it itself, read-only" in queried.stderr
