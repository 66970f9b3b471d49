"""`mitmesh plugin new`: the plugin and test it writes pass, as a user's project would run them."""

from __future__ import annotations

import subprocess
import sys

from mesh.cli import main
from mesh.config.errors import BAD_INPUT


def test_new_plugin_and_its_test_pass(tmp_path, capsys):
    assert main(["plugin", "new", "tenant-tag", "--dir", str(tmp_path / "plugins")]) == 0
    assert "wrote" in capsys.readouterr().out
    # a user's project: its own directory, no mitmesh pyproject (pytest-asyncio in strict mode)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "plugins"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout


def test_never_overwrites_and_checks_the_name(tmp_path, capsys):
    target = tmp_path / "plugins"
    assert main(["plugin", "new", "tenant", "--dir", str(target)]) == 0
    assert main(["plugin", "new", "tenant", "--dir", str(target)]) == BAD_INPUT
    assert "tenant.py: already exists; not overwritten" in capsys.readouterr().err
    assert main(["plugin", "new", "Tenant!", "--dir", str(target)]) == BAD_INPUT
    assert "plugin name: expected lowercase letters" in capsys.readouterr().err
