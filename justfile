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

# Run the whole test suite (unit and end-to-end), in two pytest-xdist processes (MITMESH_TEST_JOBS
# changes how many; 0 runs it in this process).
test *ARGS: setup
    {{py}} -m pytest -q -n "${MITMESH_TEST_JOBS:-2}" {{ARGS}}

# Benchmark: direct vs bare mitmdump vs the mitmesh gateway, printed as ratios.
bench *ARGS: setup
    {{venv}}/bin/mitmesh bench {{ARGS}}

# Load the running demo for SECONDS (1 to 300) over CONNECTIONS connections with hey, on /load/:
# catalog v1 without the public rate limit, so it measures the proxy, not the limiter.
load SECONDS="10" CONNECTIONS="10": setup
    #!/usr/bin/env bash
    set -euo pipefail
    url=http://127.0.0.1:8080/load/items
    case "{{SECONDS}}{{CONNECTIONS}}" in *[!0-9]*) echo "just load: SECONDS and CONNECTIONS are whole numbers (got {{SECONDS}} {{CONNECTIONS}})" >&2; exit 2;; esac
    if [ "{{SECONDS}}" -lt 1 ] || [ "{{SECONDS}}" -gt 300 ] || [ "{{CONNECTIONS}}" -lt 1 ] || [ "{{CONNECTIONS}}" -gt 256 ]; then
        echo "just load: SECONDS from 1 to 300, CONNECTIONS from 1 to 256 (got {{SECONDS}} {{CONNECTIONS}})" >&2; exit 2
    fi
    curl -fsS -o /dev/null "$url" || { echo "just load: $url does not answer; is the demo up (./dev up)?" >&2; exit 1; }
    echo "load: hey -z {{SECONDS}}s -c {{CONNECTIONS}} $url"
    hey -z "{{SECONDS}}s" -c "{{CONNECTIONS}}" "$url"

# Check a config file: prints ok, or every error with file, line and key path.
validate FILE="mesh.yaml": setup
    {{venv}}/bin/mitmesh validate {{FILE}}

# (the store: --store etcd://HOST:PORT/MESH in ARGS, or $MITMESH_STORE; e.g. --watch 30s --canary 2)
# Config delivery as the config-rollout CI workflow runs it: validate, policy tests, canary rollout.
rollout FILE="mesh.yaml" *ARGS: setup
    {{venv}}/bin/mitmesh validate {{FILE}}
    MITMESH_POLICY_CONFIG={{FILE}} {{py}} -m pytest -q -p no:cacheprovider tests/policy
    {{venv}}/bin/mitmesh config rollout {{FILE}} {{ARGS}}

# Install what is missing (system packages, Python >= 3.12, .venv, certificates): see ./dev.
setup:
    @bash "{{justfile_directory()}}/dev"

# Regenerate the generated docs: docs/reference/config.md from the config schema.
docs: setup
    {{venv}}/bin/mitmesh docs config
