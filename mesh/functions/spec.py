"""A function's compiled settings, the one place an instance process is started, and the import
check `mitmesh validate` runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.config.functions import Function

WORKER = str(Path(__file__).with_name("worker.py"))
_PASSED = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")  # the rest of the proxy's environment stays out


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    handler: str
    code: str  # absolute directory, first on the handler's import path
    timeout: float
    concurrency: int
    min_instances: int
    max_instances: int
    idle: float
    queue: int
    queue_timeout: float
    environment: tuple[tuple[str, str], ...] = ()
    outbound: str | None = None


def compile(name: str, model: Function, config_file: str) -> Spec:  # noqa: A001 - the compile(model) of STYLE 13
    base = Path(config_file).resolve().parent
    return Spec(name, model.handler, str((base / model.code).resolve()), model.timeout, model.concurrency,
                model.min_instances, model.max_instances, model.idle, model.queue,
                model.queue_timeout or model.timeout, tuple(model.environment.items()), model.outbound)


def compile_all(functions: dict[str, Function], config_file: str) -> dict[str, Spec]:
    return {name: compile(name, model, config_file) for name, model in functions.items()}


def argv(spec: Spec, check: bool = False) -> list[str]:
    out = [sys.executable, "-I", WORKER, "--handler", spec.handler, "--code", spec.code,
           "--name", spec.name, "--concurrency", str(spec.concurrency), "--parent", str(os.getpid())]
    return out + ["--check"] if check else out


def environment(spec: Spec) -> dict[str, str]:
    """What an instance sees: Lambda's reserved variables, the proxy to the mesh, the function's own."""
    env = {k: os.environ[k] for k in _PASSED if k in os.environ}
    env.update(AWS_LAMBDA_FUNCTION_NAME=spec.name, AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128", AWS_LAMBDA_FUNCTION_TIMEOUT=str(int(spec.timeout)),
               AWS_REGION="local", AWS_DEFAULT_REGION="local", _HANDLER=spec.handler,
               LAMBDA_TASK_ROOT=spec.code, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    if spec.outbound:
        env["HTTP_PROXY"] = env["http_proxy"] = f"http://{spec.outbound}"
        env["NO_PROXY"] = env["no_proxy"] = ""
    env.update(spec.environment)
    return env


async def start_instance(spec: Spec) -> asyncio.subprocess.Process:
    """Start one instance process as a fresh Python (stdin: calls, stdout: results, stderr: the
    proxy's). Where there is a fork server, mesh/runtime/functionforks.py forks instances instead."""
    return await asyncio.create_subprocess_exec(
        *argv(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=environment(spec),
        cwd=spec.code, start_new_session=True)


def check(spec: Spec, timeout: float = 30.0) -> str | None:
    """Import the handler in a process of its own, as an instance would: None, or why it fails."""
    if not Path(spec.code).is_dir():
        return f"code directory {spec.code} does not exist"
    try:
        done = subprocess.run(argv(spec, check=True), env=environment(spec), cwd=spec.code,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"importing {spec.handler} took longer than {timeout:g}s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"the import check exited with {done.returncode}"


def import_problems(src, functions: dict[str, Function]) -> list:
    """`mitmesh validate`: every function's handler imported as an instance would, in parallel;
    one `<file>:<line>: functions.NAME.handler: ...` problem per handler that cannot be called."""
    from concurrent.futures import ThreadPoolExecutor

    specs = compile_all(functions, src.file)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, specs.values()))
    return [src.problem(("functions", name, "handler"), f"cannot load the handler: {why} (got {s.handler!r})")
            for (name, s), why in zip(specs.items(), results) if why is not None]
