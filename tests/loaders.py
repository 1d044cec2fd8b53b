"""Loaders that subprocess servers import by name (``tests.loaders:...``) in their config."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from loadonce import GenerationRequest, InputSignature, Predictor, TensorInfo


class Echo:
    """Returns each example as its output, tagged with the worker that computed it."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        return [{"echo": example, "pid": os.getpid()} for example in batch]


def echo() -> Echo:
    return Echo()


def counting_echo() -> Echo:
    """Appends this process's pid to $LOADER_TEST_LOAD_LOG, one line per call."""
    with Path(os.environ["LOADER_TEST_LOAD_LOG"]).open("a") as log:
        log.write(f"{os.getpid()}\n")
    return Echo()


def fails_in_second_worker() -> Echo:
    """The first process to call it gets a model; any other raises. The first one also
    records its pid in $LOADER_TEST_LOAD_LOG, so the test can check it was stopped."""
    marker = os.environ["LOADER_TEST_MARKER"]
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        time.sleep(0.5)  # let the healthy worker reach the point where it waits to serve
        raise RuntimeError("this worker is the second one, and it was built to fail") from None
    return counting_echo()


def build_mlp() -> Any:
    """The factory a safetensors state dict is loaded into (options.factory)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


class SlowEcho:
    """Takes $LOADER_TEST_DELAY seconds per call and logs each call's examples."""

    def predict(self, batch: list[Any]) -> list[Any]:
        log = os.environ.get("LOADER_TEST_CALL_LOG")
        if log:
            with Path(log).open("a") as stream:
                stream.write(f"{batch!r}\n")
        time.sleep(float(os.environ.get("LOADER_TEST_DELAY", "0.2")))
        return list(batch)


def slow_echo() -> SlowEcho:
    return SlowEcho()


class Shout(Predictor):
    """Takes text; answers each text upper-cased and its length in characters."""

    signature = InputSignature(shape=(), dtype="string")
    inputs = (TensorInfo(name="text", dtype="string", shape=(None,)),)
    outputs = (
        TensorInfo(name="upper", dtype="string", shape=(None,)),
        TensorInfo(name="length", dtype="int64", shape=(None,)),
    )

    def predict(self, batch: list[str]) -> list[dict[str, Any]]:
        return [{"upper": text.upper(), "length": len(text)} for text in batch]


def shout() -> Shout:
    return Shout()


class Scaler(Predictor):
    """Multiplies each number by the request parameter ``factor`` (1 without it); records
    each call's batch size and factor, to show which requests shared a call."""

    signature = InputSignature(shape=(), dtype="float64")
    request_parameters = frozenset({"factor"})

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def predict(self, batch: Any) -> list[float]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> list[float]:
        factor = float(parameters.get("factor", 1))
        self.calls.append((len(batch), factor))
        time.sleep(0.02)
        return [float(value) * factor for value in batch]


def scaler() -> Scaler:
    return Scaler()


def slow_to_load() -> Echo:
    """Takes 0.8 s to load, long enough to send requests while it reloads."""
    time.sleep(0.8)
    return Echo()


class Constant:
    """Answers the number written in its artifact, with the worker's pid."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        return [{"value": self.value, "pid": os.getpid()} for _ in batch]


def passing_peak() -> Echo:
    """A load that holds 256 MiB for a moment (a file's bytes before they are converted, say)
    and keeps none of it."""
    import numpy as np

    buffer = np.ones(256 * 2**20, dtype=np.uint8)  # written: resident
    del buffer
    return Echo()


def build_doubling_mlp() -> Any:
    """``build_mlp``'s layers, outputs doubled by a buffer the state dict does not hold (a
    non-persistent one, as rotary tables and masks are): it is built by the factory."""
    import torch

    class Doubling(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = build_mlp()
            self.register_buffer("factor", torch.tensor(2.0), persistent=False)

        def forward(self, x: Any) -> Any:
            return self.layers(x) * self.factor

    return Doubling()


def constant_from_file(path: Path) -> Constant:
    return Constant(float(Path(path).read_text()))


def build_wide_linear() -> Any:
    """The factory of the 200 MB shared-weights test: 10,000 x 5,000 float32 weights."""
    import torch

    return torch.nn.Linear(5_000, 10_000, bias=False)


def build_tiny_linear() -> Any:
    import torch

    return torch.nn.Linear(4, 2, bias=False)


def slow_recorded_load() -> Echo:
    """Takes 1.5 s to load (long enough to overlap when workers load at once); appends
    'pid start end' (monotonic seconds, comparable across processes on one machine) to
    $LOADER_TEST_LOAD_LOG."""
    started = time.monotonic()
    time.sleep(1.5)
    with Path(os.environ["LOADER_TEST_LOAD_LOG"]).open("a") as log:
        log.write(f"{os.getpid()} {started} {time.monotonic()}\n")
    return Echo()


def build_wide_linear_small() -> Any:
    """The factory of the 40 MB planning test: 1,000 x 10,000 float32 weights."""
    import torch

    return torch.nn.Linear(10_000, 1_000, bias=False)


def report_frozen_objects(answers: Any) -> None:
    """A worker-context child's first act: put how many objects it inherited frozen and its
    youngest generation's threshold."""
    import gc

    answers.put(f"{gc.get_freeze_count()} {gc.get_threshold()[0]}")


def constant_or_hang(path: Path) -> Constant:
    """As constant_from_file, but an artifact that says "hang" never finishes loading (for
    the tests of load_timeout_s; the abandoned thread returns after a few seconds)."""
    text = Path(path).read_text()
    if text == "hang":
        time.sleep(4)
    return Constant(float(text))


def segfaults_in_native_code() -> Constant:
    """A loader whose library crashes in C (as a damaged CatBoost file makes CatBoost do)."""
    import ctypes

    ctypes.string_at(0)
    return Constant(0.0)


def constant_or_never(path: Path) -> Constant:
    """As constant_from_file, but an artifact that says "never" does not finish loading
    within any test (an hour), and one that says "exit" calls sys.exit(4)."""
    text = Path(path).read_text()
    if text == "never":
        time.sleep(3600)
    if text == "exit":
        sys.exit(4)
    return Constant(float(text))


class HangsOnMinusOne:
    """Doubles numbers; a batch holding -1 never returns (for a minute): a hung call."""

    def predict(self, batch: list[float]) -> list[float]:
        if -1 in batch:
            time.sleep(60)
        return [2 * x for x in batch]


def hangs_on_minus_one() -> HangsOnMinusOne:
    return HangsOnMinusOne()


class EndsItsProcess:
    """Doubles numbers; a batch holding -1 ends the process with os._exit(7), one holding -2
    crashes it in C (a null pointer read: SIGSEGV), a moment into the call."""

    def predict(self, batch: list[float]) -> list[float]:
        if -1 in batch or -2 in batch:
            time.sleep(0.2)  # the other requests sent with it are in flight now
            if -1 in batch:
                os._exit(7)
            import ctypes

            ctypes.string_at(0)
        return [2 * x for x in batch]


def ends_its_process() -> EndsItsProcess:
    return EndsItsProcess()


def echo_with_a_child_process() -> Echo:
    """An echo whose load leaves a short-lived child process running (as some libraries'
    helpers do): orphaned if its worker dies."""
    import subprocess

    subprocess.Popen(["sleep", "2"])
    return Echo()


class GrowingCache:
    """Doubles numbers, and keeps 16 MiB more of memory on each of its first four calls, as a
    cache filled by the first requests would (for the plan's count of requests' memory)."""

    STEP = 16 << 20
    CALLS_THAT_GROW = 4

    def __init__(self) -> None:
        self.kept: list[bytes] = []

    def predict(self, batch: list[float]) -> list[float]:
        if len(self.kept) < self.CALLS_THAT_GROW:
            self.kept.append(b"\x01" * self.STEP)  # written, so resident
        return [2 * x for x in batch]


def growing_cache() -> GrowingCache:
    return GrowingCache()


class _Reflect:
    def predict(self, batch: list[Any]) -> list[Any]:
        raise ValueError(f"cannot handle {batch[0]}")


def reflect() -> _Reflect:
    """A model whose exception quotes its input, as many do."""
    return _Reflect()


def crashes_in_native_code() -> Echo:
    """A load that kills its process as a library's C code does on a damaged file."""
    os.abort()


def hangs_at_load() -> Echo:
    """A load that never finishes (a network mount gone, a lock never released)."""
    time.sleep(3600)
    return Echo()


def constant_failing_in_second_load(path: Path) -> Constant:
    """``constant_from_file``, but an artifact named ``*-fails-second*`` loads only once: the
    second process to load it (the second worker) raises."""
    path = Path(path)
    if "-fails-second" in path.name:
        marker = path.with_suffix(".loaded")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise RuntimeError("this artifact loads in one worker only") from None
    return constant_from_file(path)


def constant_changed_while_loading(path: Path) -> Constant:
    """``constant_from_file`` for an artifact "VALUE HOW": having read it, the load changes
    the file as another process could meanwhile (``cp`` over it, a rename over it, ``rm``,
    a truncation), HOW being "rewritten", "replaced", "deleted" or "truncated"."""
    path = Path(path)
    value, _, how = path.read_text().partition(" ")
    if how == "rewritten":
        path.write_text("99")
    elif how == "replaced":
        path.with_suffix(".new").write_text("99")
        os.replace(path.with_suffix(".new"), path)
    elif how == "deleted":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, 0)
    return Constant(float(value))


def leaves_a_thread_running() -> Echo:
    """Starts a thread that is not a daemon and never ends, as some client libraries do."""
    import threading

    def forever() -> None:
        while True:
            time.sleep(0.5)

    threading.Thread(target=forever, name="a-library-thread", daemon=False).start()
    return Echo()


class _NeverCloses(Echo):
    """An echo whose close never returns (a client library's connection that never drains)."""

    def close(self) -> None:
        time.sleep(3600)


def never_closes() -> Echo:
    return _NeverCloses()


class _SlowConstant(Constant):
    """Takes 3 s a call once a file "calls-are-slow" is in ``directory``."""

    def __init__(self, value: float, directory: Path) -> None:
        super().__init__(value)
        self.directory = directory

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if (self.directory / "calls-are-slow").exists():
            time.sleep(3)
        return super().predict(batch)


def constant_slowly_from_file(path: Path) -> Constant:
    """``constant_from_file``, taking 5 s to load an artifact whose name starts "slow", or
    any artifact once a file "loads-are-slow" is beside it (as many seconds as it says, if it
    says), and 3 s a call once a file "calls-are-slow" is."""
    path = Path(path)
    flag = path.parent / "loads-are-slow"
    if path.name.startswith("slow") or flag.exists():
        # The flag may say how many seconds.
        time.sleep(float(flag.read_text() or 5) if flag.exists() else 5)
    return _SlowConstant(constant_from_file(path).value, path.parent)


class _Endless(Predictor):
    """Generates short pieces without end (until its request's limit or deadline)."""

    max_new_tokens = 1_000_000

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

    def generate(self, request: Any) -> Iterator[str]:
        while True:
            yield "x" * 63 + " "


def endless() -> _Endless:
    return _Endless()


class SlowWriter(Predictor):
    """Generates a piece every 0.1 s, up to 600 (a minute): a stream a drain can cut."""

    max_new_tokens = 600

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        for index in range(600):
            yield f"{index} "
            time.sleep(0.1)


def slow_writer() -> SlowWriter:
    return SlowWriter()
