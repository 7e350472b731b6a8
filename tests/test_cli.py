"""The installed `paddle-belle` console script."""
import os
import shutil
import subprocess
import sys

from paddle_belle import __version__


def run_cli(*args):
    exe = shutil.which("paddle-belle", path=os.path.dirname(sys.executable))
    assert exe, "paddle-belle is not installed next to this Python (pip install -e '.[cpu,test]')"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"paddle-belle {__version__}"


def test_help():
    out = run_cli("--help")
    assert out.returncode == 0 and "BELLE" in out.stdout and "usage: paddle-belle" in out.stdout


def test_unknown_command_fails_clearly():
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice: 'frobnicate'" in out.stderr
