# mitmesh developer commands. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
py := venv / "bin" / "python"

# Bring up the demo mesh (sets up first if needed); Ctrl-C stops everything.
up *ARGS: setup
    {{venv}}/bin/mitmesh up {{ARGS}}

# The same, with mitmweb on 127.0.0.1 for inspecting the gateway's flows.
web *ARGS: setup
    {{venv}}/bin/mitmesh up --web {{ARGS}}

# Run the whole test suite (unit and end-to-end).
test *ARGS: setup
    {{py}} -m pytest -q {{ARGS}}

# Benchmark: direct vs bare mitmdump vs the mitmesh gateway, printed as ratios.
bench *ARGS: setup
    {{venv}}/bin/mitmesh bench {{ARGS}}

# Check a config file: prints ok, or every error with file, line and key path.
validate FILE="mesh.yaml": setup
    {{venv}}/bin/mitmesh validate {{FILE}}

# Make .venv with a Python >= 3.12 found on this machine and install the project with dev extras.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    stamp=.venv/.mitmesh-installed
    if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
    ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
    py=""
    for c in "${MITMESH_PYTHON:-}" python3.13 python3.12 python3 python; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && ok "$c" && { py=$(command -v "$c"); break; }
    done
    if [ -z "$py" ]; then
        roots="$(pyenv root 2>/dev/null || true) $HOME/.pyenv /opt/python /usr/local /usr"
        for r in $roots; do
            for c in "$r"/versions/3.1[2-9]*/bin/python3 "$r"/bin/python3.1[2-9]; do
                [ -x "$c" ] && ok "$c" && { py="$c"; break 2; }
            done
        done
    fi
    if [ -z "$py" ]; then
        echo "mitmesh needs Python 3.12 or newer and found none." >&2
        echo "Install one (Debian/Ubuntu: apt-get install python3.12 python3.12-venv; macOS: brew install python@3.12;" >&2
        echo "or pyenv install 3.12), or point MITMESH_PYTHON at it, then run 'just setup' again." >&2
        exit 1
    fi
    echo "setup: using $py ($("$py" -V))"
    [ -x .venv/bin/python ] && ok .venv/bin/python || { rm -rf .venv; "$py" -m venv .venv; }
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    .venv/bin/mitmesh certs init
    touch "$stamp"
