"""A task's outputs: stream merging, displays, clearing, and views refreshed on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ipytasks import output
from ipytasks.output import TaskOutput


class RecordingView:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def update(self, output: TaskOutput) -> None:
        self.seen.append((output.version, len(output.outputs)))


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_consecutive_writes_to_one_stream_merge(loop: asyncio.AbstractEventLoop) -> None:
    """Writes to the same stream extend one output; a switch of stream starts another."""
    out = TaskOutput(loop)
    out.write("stdout", "a")
    out.write("stdout", "b\n")
    out.write("stderr", "oops\n")
    out.write("stdout", "c\n")
    assert [(o["name"], o["text"]) for o in out.notebook_outputs()] == [
        ("stdout", "ab\n"), ("stderr", "oops\n"), ("stdout", "c\n")
    ]
    assert out.text == "ab\noops\nc\n"


def test_merged_stream_is_a_new_dict(loop: asyncio.AbstractEventLoop) -> None:
    """Each call gives new dicts: widget traits compare old and new by value."""
    out = TaskOutput(loop)
    out.write("stdout", "a")
    before = out.notebook_outputs()
    out.write("stdout", "b")
    assert before[0]["text"] == "a" and out.notebook_outputs()[0]["text"] == "ab"


@pytest.mark.parametrize("chunk", [1, 7, 4096, 2_000_000])
def test_a_long_stream_is_shown_as_its_start_and_end(
    loop: asyncio.AbstractEventLoop, chunk: int
) -> None:
    """What is shown stays bounded; the gap says how much is left out and where it all is."""
    out = TaskOutput(loop)
    text = "".join(f"line {i}\n" for i in range(200_000))[:2_000_000]
    for start in range(0, len(text), chunk):
        out.write("stdout", text[start : start + chunk])
    assert out.text == text  # the task keeps every character
    (shown,) = out.notebook_outputs()
    head, _, rest = shown["text"].partition("\n… ")
    note, _, tail = rest.partition(" …\n")
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) <= output.HEAD_CHARS and len(tail) <= output.TAIL_CHARS
    assert head.endswith("\n") and tail.startswith("line ")  # whole lines on both sides
    left_out = len(text) - len(head) - len(tail)
    lines = text.count("\n") - head.count("\n") - tail.count("\n")
    assert note == (f"{lines:,} lines ({left_out:,} characters) left out here; "
                    "the task's .output has all of it")


def test_a_stream_within_its_window_is_shown_whole(loop: asyncio.AbstractEventLoop) -> None:
    out = TaskOutput(loop)
    text = "x" * (output.HEAD_CHARS + output.TAIL_CHARS)
    for piece in (text[:10], text[10:50_000], text[50_000:]):
        out.write("stderr", piece)
    assert out.notebook_outputs() == ({"output_type": "stream", "name": "stderr", "text": text},)


def test_display_update_and_clear(loop: asyncio.AbstractEventLoop) -> None:
    """A display with an id is replaced by an update; clear(wait=True) clears on next output."""
    out = TaskOutput(loop)
    out.display({"text/plain": "v1"}, {}, display_id="p")
    out.display({"text/plain": "other"})
    out.display({"text/plain": "v2"}, {}, display_id="p", update=True)
    assert [o["data"]["text/plain"] for o in out.notebook_outputs()] == ["v2", "other"]
    assert all("_display_id" not in o for o in out.notebook_outputs())
    out.clear(wait=True)
    assert len(out.notebook_outputs()) == 2
    out.write("stdout", "fresh")
    assert [o.get("text") for o in out.notebook_outputs()] == ["fresh"]


def test_views_refresh_once_per_burst_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Many writes from a thread arm one refresh, which runs on the loop, not in the thread."""
    out = TaskOutput(loop)
    view = RecordingView()
    out.attach(view)
    refreshed_on: list[threading.Thread] = []
    refreshed = loop.create_future()
    original = view.update

    def update(o: TaskOutput) -> None:
        refreshed_on.append(threading.current_thread())
        original(o)
        if not refreshed.done():
            refreshed.set_result(None)

    view.update = update  # type: ignore[method-assign]

    def produce() -> None:
        for i in range(100):
            out.write("stdout", f"{i}\n")

    worker = threading.Thread(target=produce)
    worker.start()
    worker.join()
    loop.run_until_complete(asyncio.wait_for(refreshed, 5))
    # Nothing was written since that refresh, and none is armed: no second one can come.
    assert not out._flush_armed
    assert len(view.seen) == 1 and view.seen[0][0] == 100
    assert refreshed_on == [threading.current_thread()]


def test_no_view_no_refresh(loop: asyncio.AbstractEventLoop) -> None:
    """Without views (a quiet task) writing schedules nothing on the loop."""
    out = TaskOutput(loop)
    out.write("stdout", "x")
    assert not out._flush_armed
