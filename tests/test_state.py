"""Who owns what: the decoder's scratch buffers, the widget's model thread, and how errors are
reported (user errors as one sentence; bugs as one sentence plus a logged traceback)."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).parents[1] / "src" / "napari_mobilesam"


# ------------------------------------------------------------------ decoder scratch buffers
def _batch(sam, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 2, 2, generator=g) * 1024
    with torch.inference_mode():
        sparse, _ = sam.prompt_encoder(points=(pts, torch.ones(n, 2, dtype=torch.int)), boxes=None, masks=None)
    return sparse


@pytest.mark.parametrize("folded", [True, False])
def test_decoder_scratch_belongs_to_its_owner_and_two_threads_can_decode(sam, folded):
    from napari_mobilesam.model import fast_decoder
    from napari_mobilesam.model.fast_decoder import FrameDecoder, Scratch

    assert not hasattr(fast_decoder, "_SCRATCH")
    features = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dec = FrameDecoder(sam, features, folded=folded)
        batches = [_batch(sam, n, seed) for seed, n in enumerate((3, 5, 1, 4))]
        want = [dec.decode(b, None, False) for b in batches]
    # the streamed path keeps one buffer, grown to the largest batch; the folded path needs none
    assert dec.scratch.nbytes == (0 if folded else 5 * 4096 * 256 * 4)
    got: dict[int, list] = {0: [], 1: []}

    def decode_all(k: int) -> None:
        with torch.inference_mode():
            for _ in range(3):
                got[k].append([dec.decode(b, None, False) for b in (batches if k == 0 else batches[::-1])])  # noqa: F821 - bound below, before the threads start

    threads = [threading.Thread(target=decode_all, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, order in ((0, want), (1, want[::-1])):
        for run in got[k]:  # the same numbers as one thread alone, bit for bit
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(run, order, strict=True))
    # a shared Scratch gives the same results; the buffers go with their last owner
    shared = Scratch()
    with torch.inference_mode():
        other = FrameDecoder(sam, features, scratch=shared, folded=folded)
        assert other.scratch is shared
        assert all(torch.equal(other.decode(b, None, False)[0], w[0]) for b, w in zip(batches, want, strict=True))
    ref = weakref.ref(dec.scratch)
    del dec
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------------ the widget's model thread
@pytest.mark.gui
def test_each_widget_owns_a_model_thread_that_ends_when_it_is_destroyed(qtbot, make_napari_viewer):
    import numpy as np
    from qtpy import sip

    from napari_mobilesam.gui.widget import MobileSAMWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 40), np.uint8), name="img")
    a, b = MobileSAMWidget(viewer), MobileSAMWidget(viewer)
    ta, tb = a.model_thread, b.model_thread
    assert ta is not tb
    ident = ta.call(threading.get_ident)
    assert ident != threading.get_ident() and ta.call(threading.get_ident) == ident  # one long-lived thread
    ran = []
    ta.submit_urgent(lambda: ran.append(1))  # queued, never drained: dropped on close
    sip.delete(a)  # what napari's teardown does to a docked widget's C++ object
    assert ta.closed and not tb.closed
    qtbot.waitUntil(lambda: ta.ended, timeout=10_000)
    assert ran == []
    with pytest.raises(RuntimeError, match="closed"):
        ta.call(threading.get_ident)
    b.shutdown()
    qtbot.waitUntil(lambda: tb.ended, timeout=10_000)


@pytest.mark.gui
def test_the_docks_x_button_ends_the_model_thread(qtbot, make_napari_viewer):
    """napari's 'x' on a dock calls remove_dock_widget, which un-parents the widget (it is not
    destroyed while the viewer's event connections hold it): the model thread ends then."""
    import numpy as np

    from napari_mobilesam.gui.widget import MobileSAMWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 40), np.uint8), name="img")
    w = MobileSAMWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="MobileSAM")
    dock.setFloating(True)  # moving the dock around keeps the widget working
    dock.setFloating(False)
    assert not w.model_thread.closed and w.model_thread.call(lambda: 5) == 5
    viewer.window.remove_dock_widget(w)
    assert w.model_thread.closed
    qtbot.waitUntil(lambda: w.model_thread.ended, timeout=10_000)


@pytest.mark.gui
def test_closing_the_model_thread_stops_its_running_job(qtbot):
    import time

    from napari.qt.threading import create_worker

    from napari_mobilesam.gui.threads import ModelThread

    steps = []

    def endless():
        while True:
            steps.append(1)
            time.sleep(0.01)
            yield len(steps)

    thread = ModelThread()
    worker = create_worker(endless, _start_thread=False)
    with qtbot.waitSignal(worker.started, timeout=10_000):
        thread.start(worker)
    qtbot.waitUntil(lambda: len(steps) > 3, timeout=10_000)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        thread.close()
    qtbot.waitUntil(lambda: thread.ended, timeout=10_000)
    n = len(steps)
    time.sleep(0.1)
    assert len(steps) == n


# ------------------------------------------------------------------ sections use the widget's public interface
def test_no_gui_module_reaches_into_another_objects_private_attributes():
    """Every gui module uses other objects (the widget's context, its state, sections, layers) through
    their public attributes only: ``x._name`` is allowed for ``self`` and ``cls`` alone."""
    import re

    # other libraries' private names the gui uses on purpose (napari's layer transforms; torch's
    # compiler modules, silenced in gui/__init__.py; the engine's frame-layout rule, named in a docstring)
    outside = {"_data_to_world", "_dynamo", "_triton", "_frame_layout"}
    found = []
    for path in sorted((SRC / "gui").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for m in re.finditer(r"([A-Za-z_][\w.]*)\._[a-z]\w*", code):
                if m.group(1) not in ("self", "cls") and m.group(0).rsplit(".", 1)[1] not in outside:
                    found.append(f"gui/{path.name}:{n}: {m.group(0)}")
    assert not found, "private attributes of another object:\n" + "\n".join(found)
    # the check sees what it must refuse (as gui/channels.py once called the widget)
    assert re.search(r"([A-Za-z_][\w.]*)\._[a-z]\w*", "self.w._unlink_store()").group(1) == "self.w"


def test_widget_state_is_one_object_with_a_reset():
    from collections import OrderedDict

    from napari_mobilesam.gui.state import WidgetState

    a, b = WidgetState(), WidgetState()
    assert a.decoders is not b.decoders and a.written is not b.written and a.cache is not b.cache  # not shared
    a.sam, a.sam_key, a.prompt_gen, a.refining = object(), ("w", "cpu"), 3, {7}
    a.written[("layer", 1)] = {5: ("sig", "hash")}
    a.decoders["k"] = object()
    a.reset()
    assert (a.sam, a.sam_key, a.prompt_gen, a.refining, a.written) == (None, None, 0, set(), {})
    assert a.decoders == OrderedDict() and len(a.cache) == 0
    a.worker = object()  # a running job
    with pytest.raises(RuntimeError, match="cancel it first"):
        a.reset()


@pytest.mark.gui
def test_widget_public_interface(qtbot, make_napari_viewer):
    import numpy as np

    from napari_mobilesam.gui.widget import MobileSAMWidget

    viewer = make_napari_viewer()
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    img = viewer.add_image(data, name="img")
    w = MobileSAMWidget(viewer)
    from qtpy.QtWidgets import QWidget

    assert MobileSAMWidget.__bases__ == (QWidget,)  # no mixins: the state is one object, the parts are sections
    assert [type(s).__name__ for s in w.sections] == ["InputSection", "ModelSection", "PromptSection", "RefineSection",
                                                      "PropagateSection", "EverythingSection"]
    # keys and job buttons come from the sections' actions
    assert w.keys == [("Shift-S", "Segment"), ("Shift-F", "Propagate"), ("Shift-E", "Segment everything"), ("Escape", "Cancel")]
    assert {id(a.button) for a in w.job_actions} == {id(b) for b in (w.segment_btn, w.refine.button, w.propagate.button, w.everything.button)}
    assert w.points_layer is w.points_box.value is not None
    assert w.shapes_layer is w.shapes_box.value is not None
    read, key, kw = w.frame_reader(img)
    assert np.array_equal(read((2,)), data[2])
    assert key((2,)) != key((1,)) and isinstance(kw, dict)
    assert w.issued == 0
    assert w.guard(lambda: 7) == 7
    w.shutdown()


# ------------------------------------------------------------------ errors: one sentence; bugs logged
@pytest.mark.gui
def test_widget_logs_bugs_with_a_traceback_and_shows_one_sentence(qtbot, make_napari_viewer, caplog, monkeypatch):
    from napari_mobilesam.gui import feedback
    from napari_mobilesam.gui.widget import MobileSAMWidget

    shown = []
    monkeypatch.setattr(feedback, "notify", shown.append)
    w = MobileSAMWidget(make_napari_viewer())
    caplog.set_level(logging.ERROR, logger="napari_mobilesam")

    def user_mistake():
        from napari_mobilesam.engine.errors import UserError  # the user's: its message is shown, nothing logged

        raise UserError("No checkpoint chosen: pick a .pt file next to 'checkpoint'.")

    assert w.guard(user_mistake) is None
    assert w.status.value == "Error: No checkpoint chosen: pick a .pt file next to 'checkpoint'."
    assert not caplog.records  # the user's input, not a bug: nothing logged

    def bug():
        return 1 / 0

    assert w.guard(bug) is None
    (record,) = caplog.records
    assert record.name == "napari_mobilesam" and record.exc_info[0] is ZeroDivisionError
    assert "Traceback" in caplog.text and "in bug" in caplog.text
    status = w.status.value
    assert status.startswith("Error: Internal error") and "ZeroDivisionError: division by zero" in status
    assert "\n" not in status and len(shown) == 2
    w.shutdown()


def test_cli_logs_bugs_with_a_traceback_and_prints_one_line(monkeypatch, caplog, capsys):
    from napari_mobilesam import cli
    from napari_mobilesam.engine.io import InputError

    caplog.set_level(logging.ERROR, logger="napari_mobilesam")

    def buggy(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "cmd_weights", buggy)
    assert cli.main(["weights"]) == 1
    (record,) = caplog.records
    assert record.exc_info[0] is TypeError and "in buggy" in caplog.text
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mobilesam weights: internal error") and "TypeError" in err

    caplog.clear()

    def bad_input(args):
        raise InputError("weights: no such name 'foo'; see `mobilesam weights`.")

    monkeypatch.setattr(cli, "cmd_weights", bad_input)
    assert cli.main(["weights"]) == 2
    assert not caplog.records
    assert capsys.readouterr().err.strip() == "mobilesam weights: error: weights: no such name 'foo'; see `mobilesam weights`."


# ------------------------------------------------------------------ cli_parser: only a missing module hides distill
def test_a_bug_in_the_distill_commands_is_not_hidden(monkeypatch):
    import sys

    from napari_mobilesam import cli, distill_cli

    def broken(subparsers):
        raise AttributeError("add_commands is broken")

    monkeypatch.setattr(distill_cli, "add_commands", broken)
    with pytest.raises(AttributeError, match="broken"):
        cli.build_parser()
    monkeypatch.setitem(sys.modules, "napari_mobilesam.distill_cli", None)  # the module is missing: ImportError
    parser = cli.build_parser()
    assert parser.parse_args(["weights"]).command == "weights"
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "x"])


def test_a_predictor_shares_its_scratch_with_its_frames_decoders(sam):
    from napari_mobilesam import Predictor
    from napari_mobilesam.engine.embeddings import Embedding

    pred = Predictor(sam)
    pred.set_embedding(Embedding(torch.zeros(1, 256, 64, 64), (64, 64), (1024, 1024)), key="a")
    first = pred.frame_decoder
    pred.set_embedding(Embedding(torch.ones(1, 256, 64, 64), (64, 64), (1024, 1024)), key="b")
    assert pred.frame_decoder is not first and pred.frame_decoder.scratch is first.scratch is pred.scratch
