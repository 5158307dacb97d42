"""A real Tinker-API server for the tests: SkyRL's (`skyrl` 0.4.0, JAX on CPU), in a virtual environment of
its own, started on a free port for a local model folder.

SkyRL needs another `tinker` SDK than the product (0.25 against 0.38) and about 2.3 GB of packages, so it
lives in a separate venv, built once and reused while its version stamp matches:
`$METACLAW_SKYRL_VENV`, else `~/.cache/metaclaw-mcp/skyrl-venv`. What it takes to run it here, all
handled in this harness and not in the product:

- skyrl 0.4.0 declares Python >= 3.12; on 3.11 its types put `typing.TypedDict` in a pydantic model,
  which pydantic refuses: the launcher makes `typing.TypedDict` typing_extensions' before importing it,
  in the API process and in the engine process.
- its API server starts the engine with `uv run ...`; the launcher starts it with the same interpreter.
- SDK >= 0.26 expects `sample_sequence_ids` (one per sample) in the `/api/v1/asample` answer, which
  SkyRL leaves out: an ASGI filter in front of the app adds them.
- `/api/v1/healthz` answers before the engine is ready: readiness is that and the engine's
  "Starting background engine" log line.

    python tests/skyrl_harness.py build     # build (or confirm) the venv; exit 0 when usable
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mcp_servers import free_port

# The install, step by step (/work/shared/SDK-NOTES.md): 0.4.0 is the version that reads the SDK's protobuf
# forward_backward; its dependencies come from 0.3.0's extras, then the SDK and libraries 0.4.0 needs.
INSTALL_STEPS: list[list[str]] = [
    ["torch==2.13.0"],
    ["skyrl[tinker,jax]==0.3.0", "gguf", "aiohttp"],   # aiohttp: imported by skyrl, not declared
    ["--no-deps", "--ignore-requires-python", "skyrl==0.4.0"],
    ["tinker>=0.25,<0.26", "zstandard>=0.23", "xxhash>=3", "tokenizers>=0.23.1", "transformers>5.8,<=5.16.1"],
]
# What the venv must import for the server to start.
IMPORT_CHECK = "import typing, typing_extensions; typing.TypedDict = typing_extensions.TypedDict; " \
               "import skyrl.tinker.api, skyrl.tinker.engine, jax, aiohttp"
READY_LINE = "Starting background engine"

LAUNCHER = r'''"""Start SkyRL's Tinker API server (mode "api") or its engine (mode "engine") with this interpreter.
Written by tests/skyrl_harness.py."""
import sys
import typing

import typing_extensions

typing.TypedDict = typing_extensions.TypedDict   # skyrl's types under Python 3.11 (pydantic wants this one)

mode = sys.argv.pop(1)
if mode == "engine":
    import runpy
    runpy.run_module("skyrl.tinker.engine", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import argparse
import json

import uvicorn

import skyrl.tinker.api as api
from skyrl.tinker.config import EngineConfig, add_model, config_to_argv

# The engine: this script again, with this interpreter (SkyRL builds a `uv run` command).
api._build_uv_run_cmd_engine = lambda parent_cmd, cfg: [sys.executable, __file__, "engine", *config_to_argv(cfg)]


class SampleSequenceIds:
    """Adds `sample_sequence_ids`, one id per requested sample, to the answer of POST /api/v1/asample."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/asample"):
            return await self.app(scope, receive, send)
        request = bytearray()
        start = {}
        body = bytearray()

        async def recv():
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b""))
            return message

        async def snd(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            data = bytes(body)
            try:
                answer = json.loads(data)
                n = int(json.loads(bytes(request)).get("num_samples", 1))
                if start.get("status") == 200 and isinstance(answer, dict) and answer.get("sample_sequence_ids") is None:
                    rid = answer.get("request_id") or answer.get("future_id") or "s"
                    answer["sample_sequence_ids"] = [f"{rid}-{i}" for i in range(n)]
                    data = json.dumps(answer).encode()
            except (ValueError, TypeError, AttributeError):
                pass
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data})

        await self.app(scope, recv, snd)


parser = argparse.ArgumentParser(description="SkyRL Tinker API server")
add_model(parser, EngineConfig)
parser.add_argument("--host", type=str, default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
args = parser.parse_args()
api.app.state.engine_config = EngineConfig.model_validate(
    {k: v for k, v in vars(args).items() if k in EngineConfig.model_fields})
uvicorn.run(SampleSequenceIds(api.app), host=args.host, port=args.port, timeout_keep_alive=75)
'''


class SkyRLUnavailable(RuntimeError):
    """The SkyRL venv could not be built or does not import: the reason, with the end of the log."""


def venv_dir() -> Path:
    return Path(os.environ.get("METACLAW_SKYRL_VENV") or Path.home() / ".cache" / "metaclaw-mcp" / "skyrl-venv")


def stamp() -> str:
    """Names the install: a venv built with other steps (or another Python) is rebuilt."""
    text = json.dumps({"steps": INSTALL_STEPS, "python": sys.version_info[:2]})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def _usable(venv: Path) -> bool:
    marker = venv / ".metaclaw-stamp"
    if not marker.is_file() or marker.read_text().strip() != stamp() or not venv_python(venv).exists():
        return False
    return subprocess.run([str(venv_python(venv)), "-c", IMPORT_CHECK], capture_output=True,
                          timeout=300).returncode == 0


def ensure_venv(verbose: bool = False) -> Path:
    """The venv's interpreter, building the venv first unless one with this stamp is there and imports.
    SkyRLUnavailable when the build fails (no network to PyPI, no disk, a broken release)."""
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one build at a time; a second caller finds it built
        if _usable(venv):
            return venv_python(venv)
        shutil.rmtree(venv, ignore_errors=True)
        log_path = venv.parent / f"{venv.name}-build.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            def run(cmd: list[str]) -> None:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                if verbose:
                    print(f"skyrl venv: {' '.join(cmd[3:] if cmd[1:3] == ['-m', 'pip'] else cmd)}", flush=True)
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    log.flush()
                    tail = "\n".join(log_path.read_text().splitlines()[-15:])
                    raise SkyRLUnavailable(f"building the SkyRL venv failed at `{' '.join(cmd)}` "
                                           f"(log {log_path}):\n{tail}")
            base = getattr(sys, "_base_executable", sys.executable)
            run([base, "-m", "venv", str(venv)])
            pip = [str(venv_python(venv)), "-m", "pip", "install", "--progress-bar", "off"]
            for step in INSTALL_STEPS:
                run([*pip, *step])
        check = subprocess.run([str(venv_python(venv)), "-c", IMPORT_CHECK], capture_output=True, text=True,
                               timeout=300)
        if check.returncode != 0:
            raise SkyRLUnavailable(f"the SkyRL venv does not import: {check.stderr.strip()[-800:]}")
        (venv / ".metaclaw-stamp").write_text(stamp() + "\n")
        if verbose:
            print(f"skyrl venv: built {venv} in {time.monotonic() - started:.0f}s", flush=True)
        return venv_python(venv)


def launcher(venv: Path | None = None) -> Path:
    """The launcher script, written into the venv (rewritten when it changed)."""
    path = (venv or venv_dir()) / "metaclaw_skyrl_launch.py"
    if not path.exists() or path.read_text() != LAUNCHER:
        path.write_text(LAUNCHER)
    return path


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class SkyRLServer:
    base_url: str          # TINKER_BASE_URL
    port: int
    base_model: str        # the folder the server was started with: the only base_model it accepts
    max_lora_rank: int
    log: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def timings(self) -> list[str]:
        """SkyRL's own timing lines so far (each request's processing time, each JIT compilation)."""
        return [line.split(" - skyrl: ", 1)[-1].strip() for line in self.log.read_text(errors="replace").splitlines()
                if "(timing)" in line or "JIT compilation" in line]


@contextlib.contextmanager
def skyrl_server(model_dir: Path, workdir: Path, max_lora_rank: int = 16, max_lora_adapters: int = 4,
                 timeout: float = 300.0) -> Iterator[SkyRLServer]:
    """SkyRL's API server and engine (JAX on CPU) for `model_dir` on a free loopback port, until the
    block ends (then both are stopped: they share a process group of their own). Ready when
    `/api/v1/healthz` answers and the engine has logged that it started."""
    python = ensure_venv()
    script = launcher(python.parent.parent)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"skyrl-{port}.log"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("TINKER_API_KEY", None)
    cmd = [str(python), str(script), "api", "--base-model", str(model_dir), "--backend", "jax",
           "--backend-config", json.dumps({"max_lora_adapters": max_lora_adapters, "max_lora_rank": max_lora_rank}),
           "--database-url", f"sqlite:///{workdir / 'skyrl.db'}", "--checkpoints-base", str(workdir / "checkpoints"),
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = SkyRLServer(f"http://127.0.0.1:{port}", port, str(model_dir), max_lora_rank, log_path, proc)
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"SkyRL exited with {proc.returncode} before it was ready:\n{server.log_tail()}")
            if READY_LINE in log_path.read_text(errors="replace") and _healthy(server.base_url):
                break
            if time.monotonic() > end:
                raise RuntimeError(f"SkyRL not ready within {timeout:.0f}s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (API server and engine), SIGKILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the engine may outlive the API process by a moment: the group gets the same signal once more
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        return


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit(f"usage: {sys.argv[0]} build")
    t0 = time.monotonic()
    try:
        print(f"skyrl venv ready: {ensure_venv(verbose=True)} ({time.monotonic() - t0:.0f}s)", flush=True)
    except SkyRLUnavailable as exc:
        sys.exit(str(exc))
