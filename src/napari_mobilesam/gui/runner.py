"""Background jobs for the dock widget: napari thread_worker, progress bar, Cancel, error notifications."""

from __future__ import annotations

from collections.abc import Callable, Generator

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_warning

from .._errors import log_unexpected
from . import feedback
from .jobs import ModelReady, Progress
from .state import WidgetState
from .threads import ModelThread

__all__ = ["JobRunner"]


class JobRunner:
    """Runs one generator job at a time in a worker thread, for the dock widget.

    It shows the job on the widget's ``progress`` (magicgui ProgressBar), ``status`` (StatusLine) and
    ``cancel_btn``, disables ``buttons()`` (every section's job buttons) while the job runs, and
    hands a built model (:class:`~.jobs.ModelReady`) to ``on_model(sam, key)``. What it remembers
    (the worker, cancelled / failed) lives in the widget's :class:`~.state.WidgetState`.

    ``model_thread`` (:class:`~napari_mobilesam.gui.threads.ModelThread`) runs every job and live
    decode; it is closed (the running job stops after its step, the thread ends) with the widget.
    """

    def __init__(self, state: WidgetState, progress, status, cancel_btn, buttons: Callable[[], list],
                 on_model: Callable[[object, tuple], None]) -> None:
        self.state = state
        self.progress, self.status, self.cancel_btn = progress, status, cancel_btn
        self.buttons, self.on_model = buttons, on_model
        self.model_thread = ModelThread()

    @property
    def busy(self) -> bool:
        return self.state.busy

    def close(self) -> None:
        """Stop the running job after its current step (saying so) and end the model thread."""
        if self.busy:
            show_warning("MobileSAM: the dock was closed, so the running job stops after its current step "
                         "(what it finished is kept). Open Plugins > MobileSAM to go on.")
        self.model_thread.close()

    def run_job(self, gen: Generator, on_msg: Callable | None = None, on_finish: Callable | None = None, title: str = ""):
        """Run ``gen`` in a thread worker; messages go to ``on_msg`` on the GUI thread."""
        if self.busy:
            show_warning("MobileSAM is busy with another job: wait or press Cancel.")
            return None
        model_thread = self.model_thread

        def guarded():
            # errors travel as messages: superqt drops the `finished` signal for RuntimeErrors
            try:
                while True:
                    try:
                        msg = next(gen)
                    except StopIteration as stop:
                        return stop.value
                    yield msg
                    model_thread.run_urgent()  # live decodes asked for meanwhile run between two steps
            except Exception as err:  # noqa: BLE001 - shown as a notification with the fix, never a traceback
                yield err
                return None

        worker = create_worker(guarded, _start_thread=False)

        # Updating napari's activity bar can process Qt events, and with them the worker's
        # `finished`, while a message is still being handled: finishing then waits for it.
        state = {"in_msg": False, "finish_pending": False}

        def on_yield(msg) -> None:
            state["in_msg"] = True
            try:
                handle(msg)
            finally:
                state["in_msg"] = False
                if state["finish_pending"]:
                    state["finish_pending"] = False
                    on_finished()

        def handle(msg) -> None:
            if isinstance(msg, Exception):
                on_error(msg)
                return
            if isinstance(msg, ModelReady):
                self.on_model(msg.sam, msg.key)
            elif isinstance(msg, Progress):
                self.show_progress(msg.done, msg.total, f"{title}: {msg.message}" if title else msg.message)
            if on_msg is not None:
                on_msg(msg)

        def on_error(err: Exception) -> None:
            self.state.job_failed = True
            self.report_error(err)

        def on_finished() -> None:
            if state["in_msg"]:
                state["finish_pending"] = True
                return
            st = self.state
            st.worker = None
            st.soft_cancel = False
            if st.activity is not None:
                st.activity.close()
                st.activity = None
            self.progress.visible = False
            self.cancel_btn.enabled = False
            for b in self.buttons():
                b.enabled = True
            if on_finish is not None:
                on_finish()
            self.model_thread.drain()  # live decodes queued after the job's last step
            pending, st.after_job = st.after_job, []
            for fn in pending:
                fn()

        worker.yielded.connect(on_yield)
        worker.errored.connect(on_error)
        worker.finished.connect(on_finished)
        st = self.state
        st.job_cancelled = st.job_failed = False
        st.worker = worker
        st.activity = napari_progress(total=0, desc=f"MobileSAM {title}".strip())  # napari's activity dock
        self.progress.visible = True
        self.progress.max = 0
        self.cancel_btn.enabled = True
        for b in self.buttons():
            b.enabled = False
        self.model_thread.start(worker)  # the model thread: see threads.py
        return worker

    def show_progress(self, done: int, total: int, message: str) -> None:
        """Update the widget's bar, status line and napari's activity bar (total 0: busy)."""
        self.progress.max = max(total, 0)
        self.progress.value = min(done, total) if total > 0 else 0
        self.status.value = message
        act = self.state.activity  # napari's bar may process events (and end the job) while updating
        if act is not None:
            if act.total != total:
                act.total = total
            act.n = min(done, total) if total > 0 else 0
            act.set_description(message[:60])

    def end_status(self, text: str) -> None:
        """A job's last status line, unless the job failed (its error message stays)."""
        if not self.state.job_failed:
            self.status.value = text

    def cancel(self, _=None) -> None:
        """Stop the running job after its current step (what it finished is kept)."""
        st = self.state
        if st.worker is not None:
            st.job_cancelled = True
            if st.soft_cancel:  # the job polls job_cancelled and ends itself, keeping what it finished
                self.status.value = "cancelling… (what is done is written as a partial frame)"
                return
            self.status.value = "cancelling… (the current step finishes first)"
            st.worker.quit()

    def guard(self, fn: Callable) -> object:
        """Run ``fn`` (a button's or a key's action); an error becomes a notification (see
        :meth:`report_error`) and None is returned."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - shown as one sentence; bugs are logged too
            self.report_error(err)
            return None

    def report_error(self, err: Exception) -> None:
        """A napari notification with one short sentence naming the fix (the technical details
        behind its *View Traceback*), and the same sentence as the status line. An error that is
        not the user's (a bug) is logged with its traceback too."""
        log_unexpected(err, "MobileSAM widget")
        feedback.notify(feedback.error_notification(err))
        self.status.value = f"Error: {feedback.short_error(err)}"

