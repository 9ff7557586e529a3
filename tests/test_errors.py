"""The exception family: one module, one base class, the public names are its classes."""

from __future__ import annotations

import ipytasks
from ipytasks import errors
from ipytasks.records import TaskOptions, TaskRecord, TaskState


def test_every_task_error_is_a_task_error_and_public_from_one_module() -> None:
    """Each error ipytasks raises about a task derives from TaskError (a worker's RemoteError
    too), and ``ipytasks.X`` is the class of ``ipytasks.errors``."""
    for name in ("BrokenWorker", "RemoteError", "ShippingError", "TaskCancelled", "TaskFailed",
                 "TaskSkipped"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.TaskError), name
        assert getattr(ipytasks, name) is cls, name
    assert ipytasks.TaskConflictWarning is errors.TaskConflictWarning
    assert issubclass(errors.TaskConflictWarning, UserWarning)


def test_task_failed_names_every_failure_then_each_traceback() -> None:
    """TaskFailed's first line names every task that did not succeed, with its state; each
    one's error follows under its name."""
    records = []
    for name, state, error in (
        ("a", TaskState.FAILED, ValueError("bad a")),
        ("b", TaskState.TIMED_OUT, TimeoutError("took too long")),
        ("c", TaskState.SKIPPED, errors.TaskSkipped("upstream 'a' failed")),
    ):
        record = TaskRecord(name=name, source="", options=TaskOptions(), state=state)
        record.error = error
        records.append(record)
    failed = errors.TaskFailed(records)
    first, _, rest = str(failed).partition("\n")
    assert first == "3 tasks did not succeed: a (failed), b (timed_out), c (skipped)"
    for text in ("--- a: failed ---\nValueError: bad a", "--- b: timed_out ---",
                 "--- c: skipped ---\nTaskSkipped: upstream 'a' failed"):
        assert text in rest, rest
    assert failed.failures == records
    assert failed._render_traceback_()[0] == f"TaskFailed: {first}"


def test_a_remote_error_without_traceback_keeps_its_note() -> None:
    """A worker's exception that could not be re-created (RemoteError) shows what the worker
    said about it, even without a traceback: it is not one of ipytasks' one-line errors."""
    error = errors.RemoteError("Odd: 1-2", "Traceback ...\nOdd: 1-2\n", "Odd")
    error.add_note("Traceback in the worker process:\n  line 5")
    record = TaskRecord(name="r", source="", options=TaskOptions(), state=TaskState.FAILED)
    record.error = error
    assert "Traceback in the worker process" in record.error_text()
    record.error = errors.BrokenWorker("worker process died (exit code 3)")
    assert record.error_text() == "BrokenWorker: worker process died (exit code 3)"
