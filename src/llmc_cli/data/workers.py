"""Encode chunks of examples on worker processes, in file order, and stop at once when told.

Each worker has its own pipe and at most one chunk in flight; chunk ``i`` goes to worker
``i % n`` and results are read back in the same order, so the output does not depend on
timing. This replaces ``concurrent.futures.ProcessPoolExecutor``, which deadlocked on a
clean stop: its workers share one result pipe, and terminating a worker in the middle of
writing a result left a partial message that the executor's manager thread waited on for
ever (``shutdown()`` never returned; seen in CI after SIGTERM, reproduced 1 in 15 times on a
loaded 2-core machine). With a pipe per worker, a worker that is killed can only break its
own pipe, which the parent closes.

Why one chunk in flight: the parent only sends to a worker that is waiting for work, so a
send never blocks on a worker that is itself blocked sending its result back.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection

from llmc_cli.data.formats import Example
from llmc_cli.data.tokenize import EncodedChunk, encode_chunk
from llmc_cli.errors import DataError

PR_SET_PDEATHSIG = 1
STOP_WAIT_S = 5.0  # a terminated worker that has not exited by then is killed

Chunks = Iterator[tuple[list[int], list[Example]]]


class Encoder:
    """Encodes chunks in order, in this process (``workers == 1``) or on worker processes.

    Use as a context manager: leaving it normally lets the workers finish, leaving it on an
    exception (a stop, a data error) terminates them without waiting for chunks in flight."""

    def __init__(self, tokenizer, options: tuple, workers: int) -> None:
        self.tokenizer, self.options, self.workers = tokenizer, options, workers
        self.processes: list = []
        self.pipes: list[Connection] = []

    def __enter__(self) -> Encoder:
        if self.workers > 1:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
            for _ in range(self.workers):
                mine, theirs = context.Pipe(duplex=True)
                process = context.Process(target=_serve, args=(theirs, self.tokenizer, self.options), daemon=True)
                process.start()
                theirs.close()  # the worker holds its end: if it dies, reading ours ends with EOFError
                self.processes.append(process)
                self.pipes.append(mine)
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for pipe in self.pipes:
                _quietly(pipe.send, None)
        else:
            for process in self.processes:
                _quietly(process.terminate)
        for process in self.processes:
            process.join(STOP_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()

    def run(self, chunks: Chunks) -> Iterator[tuple[list[int], EncodedChunk]]:
        if not self.processes:
            for lines, examples in chunks:
                yield lines, encode_chunk(self.tokenizer, examples, *self.options)
            return
        pending: deque[tuple[list[int], int]] = deque()
        upcoming = iter(chunks)
        for index in range(len(self.pipes)):  # one chunk to each worker
            chunk = next(upcoming, None)
            if chunk is None:
                break
            self._send(chunk, index, pending)
        ready = next(upcoming, None)  # read and checked while the workers encode
        while pending:
            lines, index = pending.popleft()
            encoded = self._receive(index)
            if ready is not None:  # keep that worker busy while the parent writes and reads on
                self._send(ready, index, pending)
                ready = next(upcoming, None)
            yield lines, encoded

    def _send(self, chunk: tuple[list[int], list[Example]], index: int, pending: deque) -> None:
        lines, examples = chunk
        try:
            self.pipes[index].send(examples)
        except OSError:  # BrokenPipeError: that worker is gone (click would exit 1 on it without a word)
            raise self._died(index) from None
        pending.append((lines, index))

    def _receive(self, index: int) -> EncodedChunk:
        try:
            ok, value = self.pipes[index].recv()
        except (EOFError, OSError):
            raise self._died(index) from None
        if not ok:
            raise value
        return value

    def _died(self, index: int) -> DataError:
        process = self.processes[index]
        process.join(STOP_WAIT_S)
        return DataError(
            f"A data-preparation worker stopped unexpectedly (exit code {process.exitcode}; "
            "-9 is usually the out-of-memory killer).",
            hint="Run again; if it happens again, prepare with fewer processes: --data-workers 1.",
        )


def _quietly(action, *args) -> None:
    try:
        action(*args)
    except (OSError, ValueError):  # the worker or its pipe is already gone
        pass


def _serve(pipe: Connection, tokenizer, options: tuple) -> None:
    """A worker's loop: encode each chunk received until the parent sends None or goes away."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole group
    _die_with_parent()
    while True:
        try:
            examples = pipe.recv()
        except (EOFError, OSError):
            return
        if examples is None:
            return
        try:
            reply = (True, encode_chunk(tokenizer, examples, *options))
        except Exception as error:  # noqa: BLE001 - raised again in the parent, in file order
            reply = (False, error)
        pipe.send(reply)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this worker if the parent dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except OSError:
        pass
