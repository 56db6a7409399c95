"""`enx-streams kafka start|status|stop` as the README shows them, on a data directory of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.broker.local import free_port

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=180, env=env)


def test_start_status_stop(tmp_path: Path) -> None:
    port = str(free_port())
    where = ["--data-dir", str(tmp_path), "--port", port]
    try:
        started = cli("kafka", "start", *where)
        assert started.returncode == 0, started.stderr
        assert f"running  bootstrap=localhost:{port}" in started.stdout
        assert (tmp_path / "kafka" / "broker.log").exists()

        status = cli("kafka", "status", *where)
        assert status.returncode == 0 and status.stdout.startswith("running")

        taken = cli("kafka", "start", "--data-dir", str(tmp_path / "other"), "--port", port)
        assert taken.returncode == 1
        assert f"port {port} is already taken" in taken.stderr
    finally:
        stopped = cli("kafka", "stop", *where)
    assert stopped.returncode == 0 and "stopped cleanly" in stopped.stdout
    after = cli("kafka", "status", *where)
    assert after.returncode == 3 and after.stdout.startswith("stopped")


def test_missing_java_is_said_plainly(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    result = cli("kafka", "start", "--data-dir", str(tmp_path), "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert "Java is not installed" in result.stderr
