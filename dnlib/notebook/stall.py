"""Headless notebook runs that never hang on a lost reply, and fail fast when a kernel stalls anyway.

The widget-cell hangs of issue 11 were a lost wakeup in the client: see :func:`slice_polls` (the fix, used by
:class:`StallWatchingClient`). The stall watch below is the guard for any other lost message.

A notebook client (papermill/nbclient) sends a cell as an ``execute_request`` on the shell channel and waits
for the matching ``execute_reply``; the kernel also reports ``status: busy`` when it starts the request and
``status: idle`` when it is done, on IOPub. When a message is lost (e.g. a request stranded in the kernel's
shell socket, or a reply that never leaves it) the client waits for the whole cell timeout with an idle kernel.

:class:`StallWatchingClient` watches every cell while it waits for the reply and raises :class:`CellStalled`
(naming the notebook and the cell) when, for ``stall_timeout`` seconds,

* the kernel reported ``idle`` for this cell but sent no ``execute_reply`` (the kernel finished the cell, the
  reply is lost; a reply is sent *before* the idle status, so it never legitimately lags by seconds), or
* the kernel never reported ``busy`` for this cell (it did not start the request) and its process used no CPU.

A kernel that reported ``busy`` and not yet ``idle`` is executing the cell: it is never called stalled, however
long the cell runs or sleeps (the cell timeout still applies). Use it through papermill with
``papermill.execute_notebook(..., engine_name=ENGINE_NAME, stall_timeout=30, notebook_name="x.ipynb")`` after
:func:`register_engine`; :func:`dnlib.notebook.suite.execute` does this.
"""
from __future__ import annotations

import asyncio
from queue import Empty
from time import monotonic
from typing import Any

from nbclient.exceptions import CellTimeoutError
from nbclient.util import run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args
from traitlets import Float, Unicode

__all__ = ["CellStalled", "StallWatchingClient", "slice_polls", "StallWatchingEngine", "register_engine",
           "ENGINE_NAME", "DEFAULT_STALL_TIMEOUT"]

ENGINE_NAME = "dnlib-stall"
#: Seconds without a reply from an idle kernel before a cell counts as stalled.
DEFAULT_STALL_TIMEOUT = 30.0
#: Kernel CPU seconds that count as "working" (an idle ipykernel uses ~0; its timers a few ms per minute).
CPU_ACTIVITY = 0.2


class CellStalled(CellTimeoutError):
    """The kernel is idle but never answered a cell: the message names the notebook, the cell and what was
    (not) received. ``cell_index``, ``exec_count``, ``ename`` and ``evalue`` are set like a cell error's."""

    def __init__(self, notebook: str, cell_index: int, exec_count: Any, reason: str, waited: float):
        self.notebook, self.cell_index, self.exec_count, self.waited = notebook, cell_index, exec_count, waited
        self.ename = "CellStalled"
        where = f"cell {cell_index}" + (f" (In [{exec_count}])" if exec_count is not None else "")
        self.evalue = f"no reply after {waited:.0f} s: {reason}"
        super().__init__(f"{notebook + ': ' if notebook else ''}{where} stalled: {self.evalue}")


def slice_polls(channel, interval: float) -> None:
    """Make ``channel.get_msg(timeout)`` wait in slices of at most ``interval`` seconds (same result).

    The fix for the widget-cell hangs (issue 11): nbclient's Output-widget mimic (``OutputWidget.sync_state``)
    sends ``comm_msg``s on the shell socket from the IOPub coroutine while another coroutine awaits the
    ``execute_reply`` on that same ``zmq.asyncio`` socket with one unbounded ``poll``. When such a send (a
    captured figure, tens of KB) overlaps the reply's arrival, the socket's edge-triggered wakeup is lost: the
    reply sits in the socket (``ZMQ_EVENTS`` has ``POLLIN``), the poll future stays pending, the loop sleeps in
    epoll until the cell timeout. A fresh ``poll`` checks ``ZMQ_EVENTS`` when it starts, so polling in slices
    delivers a stranded reply within ``interval``. Nothing is consumed by a poll that times out.
    """
    get_msg = channel.get_msg

    async def sliced_get_msg(timeout: float | None = None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            step = interval if deadline is None else max(0.0, min(interval, deadline - monotonic()))
            try:
                return await get_msg(timeout=step)
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    channel.get_msg = sliced_get_msg


class StallWatchingClient(PapermillNotebookClient):
    """papermill's notebook client with the shell channel polled in slices (:func:`slice_polls`, the hang's
    fix) plus a watcher that turns a stalled cell into :class:`CellStalled` (a guard for any other loss)."""

    stall_timeout = Float(DEFAULT_STALL_TIMEOUT, allow_none=True,
                          help="seconds an idle kernel may leave a cell unanswered (None or <= 0: no watch)"
                          ).tag(config=True)
    stall_poll = Float(1.0, help="seconds between two checks of the watcher").tag(config=True)
    notebook_name = Unicode("", help="the notebook's name, for messages").tag(config=True)
    shell_poll_interval = Float(0.25, allow_none=True,
                                help="longest single wait on the shell channel (None: nbclient's unbounded "
                                     "wait, which can miss a reply, see slice_polls)").tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen: dict[str, dict[str, Any]] = {}
        self._cell_running = False      # a cell was sent and its reply has not come (timeout, stall, dead kernel)

    # --- what the kernel said about each request ----------------------------------------------------------
    def process_message(self, msg, cell, cell_index):
        """Record busy/idle/activity of the request, then papermill's processing (which may raise on idle)."""
        parent = msg.get("parent_header", {}).get("msg_id")
        if parent:
            seen = self._seen.setdefault(parent, {"busy": None, "idle": None, "last": None})
            now = monotonic()
            seen["last"] = now
            if msg["msg_type"] == "status":
                state = msg["content"].get("execution_state")
                if state in ("busy", "idle") and seen[state] is None:
                    seen[state] = now
            elif msg["msg_type"] == "execute_input" and seen["busy"] is None:
                seen["busy"] = now
        return super().process_message(msg, cell, cell_index)

    def _kernel_cpu(self) -> float | None:
        """User + system CPU seconds of the kernel process (None when unknown: remote kernel, no psutil)."""
        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        if pid is None:
            return None
        try:
            import psutil

            times = psutil.Process(pid).cpu_times()
            return times.user + times.system
        except Exception:  # no psutil, process gone (the alive-check reports that)
            return None

    async def _watch_for_stall(self, msg_id: str, cell, cell_index: int) -> CellStalled:
        """Return (not raise) the error once the request counts as stalled; runs until cancelled otherwise."""
        start = monotonic()
        cpu_mark, cpu_since = self._kernel_cpu(), start
        while True:
            await asyncio.sleep(self.stall_poll)
            now = monotonic()
            cpu = self._kernel_cpu()
            if cpu is not None and cpu_mark is not None and cpu - cpu_mark > CPU_ACTIVITY:
                cpu_mark, cpu_since = cpu, now
            seen = self._seen.get(msg_id, {})
            reason = None
            if seen.get("idle") is not None:
                quiet = now - seen["idle"]
                if quiet > self.stall_timeout:
                    reason = (f"the kernel reported idle for this cell {quiet:.0f} s ago but never sent its "
                              f"execute_reply (the reply was lost)")
            elif seen.get("busy") is None:
                quiet = now - max(start, cpu_since)
                if quiet > self.stall_timeout:
                    cpu_note = "" if cpu is None else f" and used {cpu - cpu_mark:.2f} s of CPU"
                    reason = (f"the kernel never started the execute_request (no busy status or execute_input "
                              f"in {now - start:.0f} s{cpu_note}; the request was lost)")
            if reason is not None:
                return CellStalled(self.notebook_name, cell_index, cell.get("execution_count"), reason, now - start)

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        self._cell_running = True
        reply = await self._poll_watched(msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive)
        self._cell_running = False      # an exception (timeout, stall) leaves it set: the kernel may be busy
        return reply

    async def _poll_watched(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        channel = self.kc.shell_channel
        if self.shell_poll_interval and getattr(channel, "_dnlib_sliced", None) != self.shell_poll_interval:
            slice_polls(channel, self.shell_poll_interval)
            channel._dnlib_sliced = self.shell_poll_interval
        poll = super()._async_poll_for_reply(msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive)
        if not self.stall_timeout or self.stall_timeout <= 0:
            return await poll
        cell_index = next((i for i, c in enumerate(self.nb.cells) if c is cell), -1)
        reply = asyncio.ensure_future(poll)
        watch = asyncio.ensure_future(self._watch_for_stall(msg_id, cell, cell_index))
        try:
            await asyncio.wait({reply, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the dead-kernel check cancelled us
            reply.cancel()
            watch.cancel()
            raise
        if reply.done():
            watch.cancel()
            self._seen.pop(msg_id, None)
            return reply.result()
        reply.cancel()
        task_poll_kernel_alive.cancel()
        self._seen.pop(msg_id, None)
        raise watch.result()

    # --- shutting the kernel down ------------------------------------------------------------------------
    async def _async_cleanup_kernel(self) -> None:
        """nbclient's cleanup, without jupyter_client's SIGINT when no cell is running.

        ``KernelManager.shutdown_kernel`` interrupts the kernel's process group before every shutdown. ipykernel
        ignores SIGINT between messages, but inside a message handler it logs ``[IPKernelApp] ERROR |
        KeyboardInterrupt caught in kernel.``: papermill's last request (``kernel_info``) sends its reply before
        its handler restores the ignore, a race a loaded machine wins (``make run`` printed it for 02, which
        passed). After the last reply there is nothing to interrupt; a cell that timed out or stalled is still
        interrupted as before."""
        km = self.km
        if km is not None and not self._cell_running:
            async def no_interrupt() -> None:
                return None
            km._async_interrupt_kernel = no_interrupt   # this manager only; shutdown_kernel calls it by name
        await super()._async_cleanup_kernel()

    _cleanup_kernel = run_sync(_async_cleanup_kernel)


class StallWatchingEngine(NBClientEngine):
    """papermill's nbclient engine with :class:`StallWatchingClient` (same arguments, plus ``stall_timeout``
    and ``notebook_name``)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout, kernel_name=kernel_name, log=logger, log_output=log_output,
            stdout_file=stdout_file, stderr_file=stderr_file,
        )
        return StallWatchingClient(nb_man, **final_kwargs).execute()


def register_engine() -> str:
    """Register :class:`StallWatchingEngine` with papermill (idempotent); return its name."""
    papermill_engines.register(ENGINE_NAME, StallWatchingEngine)
    return ENGINE_NAME
