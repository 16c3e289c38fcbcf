"""Issue 23 item 2: a sampler is added in one file. The sampler below exists in this test file only;
registered, it is a choice of the engine, of ``mobilesam everything`` (with its flag) and of the widget."""

from __future__ import annotations

from collections.abc import Generator, Hashable
from dataclasses import dataclass

import numpy as np
import pytest

from napari_mobilesam.engine.samplers import (
    SamplerContext,
    decode_boxes,
    default_sampler,
    get_sampler,
    opt,
    register_sampler,
    sampler_names,
    unregister_sampler,
)


@dataclass
class CentreOptions:
    side: int = opt(24, "side of the one box, in pixels", metavar="PX",
                    gui={"label": "box px", "min": 4, "max": 512, "step": 2, "tooltip": "side of the box"})


class CentreSampler:
    """One box of ``side`` pixels around the frame's centre."""

    name = "centre"
    label = "centre (one box)"
    help = "one box around the frame's centre"
    empty_hint = "give a larger --side"
    options = CentreOptions
    score_defaults = (0.0, 0.0)
    needs_detector = False

    def propose(self, ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None,
                options: CentreOptions) -> Generator[tuple[float, str], None, list]:
        r, c = rgb.shape[0] / 2, rgb.shape[1] / 2
        h = options.side / 2
        return (yield from decode_boxes(ctx, np.array([[r - h, c - h, r + h, c + h]])))


@pytest.fixture
def centre():
    register_sampler(CentreSampler)
    yield get_sampler("centre")
    unregister_sampler("centre")


def test_registered_sampler_runs_in_the_engine(centre, predictor, cell_image):
    from napari_mobilesam import Prompt
    from napari_mobilesam.engine.everything import objects_to_labels, segment_everything

    assert sampler_names()[:3] == ("blobs", "object-aware", "grid") and "centre" in sampler_names()
    frame = np.ascontiguousarray(cell_image[:96, :128])
    got = segment_everything(frame, predictor, sampler="centre", side=40, min_visible=0.0)
    # the same box, decoded by hand: the sampler asked the decoder about exactly that box
    predictor.set_image(frame)
    (mask,) = predictor.predict_objects([Prompt(box=[48 - 20, 64 - 20, 48 + 20, 64 + 20])], multimask_output=False)
    np.testing.assert_array_equal(got, objects_to_labels([mask], (96, 128), 1, None, 0.0))
    with pytest.raises(TypeError, match="diameter"):  # another sampler's option
        segment_everything(frame, predictor, sampler="centre", diameter=10)
    with pytest.raises(ValueError, match="already"):
        register_sampler(CentreSampler)
    with pytest.raises(ValueError, match="'centre'"):  # unknown names list the registered ones
        get_sampler("watershed")


def test_registered_sampler_in_the_cli_help_and_flags(centre, capsys):
    from napari_mobilesam.cli import build_parser, main
    from napari_mobilesam.cli_parser import sampler_options

    with pytest.raises(SystemExit):
        main(["everything", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{blobs,object-aware,grid,centre}" in text
    assert "--side PX centre: side of the one box, in pixels (default 24)" in text
    args = build_parser().parse_args(["everything", "a.tif", "-o", "b.tif", "--sampler", "centre", "--side", "30"])
    assert (args.sampler, args.side) == ("centre", 30)
    assert sampler_options()["side"] == ("side", ("centre",))
    # a flag of another sampler is refused by name
    assert main(["everything", "a.tif", "-o", "b.tif", "--sampler", "centre", "--diameter", "9"]) == 2
    assert "--diameter applies to --sampler blobs, not centre" in capsys.readouterr().err


def test_one_default_sampler():
    assert default_sampler() == default_sampler(None) == "blobs"
    assert default_sampler("ObjectAwareModel.pt") == "object-aware"


@pytest.mark.gui
def test_registered_sampler_in_the_widget(centre, make_napari_viewer):
    from napari_mobilesam.gui.widget import MobileSAMWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8))
    w = MobileSAMWidget(viewer)
    try:
        ev = w.everything
        assert "centre" in ev.sampler.choices
        assert ev.sampler.value == "blobs" and ev.side.native.isHidden()
        ev.sampler.value = "centre"
        assert not ev.side.native.isHidden() and ev.diameter.native.isHidden() and ev.side.label == "box px"
        ev.side.value = 30
        assert ev.options() == {"min_score": 0.0, "side": 30}
    finally:
        w.shutdown()
