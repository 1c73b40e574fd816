"""addLatencyToDQ (DQ bit 8 from earlier frames' bright pixels), scored against the
simulator's planted persistence."""

import dataclasses
import datetime as dt

import numpy as np
import pytest

from gsaoi_watch.data.fitsio import load_bpm, load_frame
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.reduction.latency import add_latency_to_dq, apply_latency, latency_mask
from gsaoi_watch.reduction.recipes import preprocess
from gsaoi_watch.reduction.standardize import add_dq, info, prepare
from gsaoi_watch.sim import BPM_NAME, simulate_night, truth_persistence

SIZE = 256
LATENCY = DQ["cosmic_ray"]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency_night")
    truth = simulate_night(out, seed=33, size=SIZE, workers=2)
    return out, truth


@pytest.fixture(scope="module")
def prepared(night):
    """Science and standard frames through prepare ... addVAR, in time order, by name."""
    out, truth = night
    bpm = load_bpm(out / BPM_NAME)
    return {f["filename"]: preprocess(load_frame(out / f["filename"]), bpm=bpm)
            for f in truth["frames"] if f["kind"] in ("science", "standard")}


def frames_of(truth, kind):
    return [f for f in truth["frames"] if f["kind"] == kind]  # truth.json is in time order


def planted(out, name, ext, plane, shape):
    mask = np.zeros(shape, dtype=bool)
    mask.reshape(-1)[truth_persistence(out, name, ext)[plane]] = True
    return mask


def full_array(out, truth, name, ext):
    """A full-frame frame's latent pixels on the whole array."""
    return planted(out, name, ext, "latent", (SIZE, SIZE))


def roi_window(truth, std, index):
    """(x0, y0, n) of the array rows an ROI frame really read."""
    x0, y0 = truth["conventions"]["roi_origin"]
    return x0, y0 + std["arrays"][index]["roi_row_shift"], SIZE // 2


def ut(frame):
    return info(frame).ut_datetime()


def test_bright_pixels_flagged_by_add_dq_are_the_planted_latent_pixels(night, prepared):
    out, truth = night
    n = 0
    for f in frames_of(truth, "science"):
        frame = prepared[f["filename"]]
        for i, arr in enumerate(frame.arrays):
            bright = (arr.dq & (DQ["saturated"] | DQ["non_linear"])) != 0
            assert np.array_equal(bright, planted(out, f["filename"], i + 1, "latent",
                                                  arr.shape))
            n += int(bright.sum())
    assert n > 1000  # the on-target frames saturate on bright stars


def test_sequence_flags_exactly_the_planted_persistence(night, prepared):
    out, truth = night
    masks = []
    n_frames_hit = n_unsaturated = 0
    for f in frames_of(truth, "science"):
        frame = prepared[f["filename"]]
        before = [a.dq.copy() for a in frame.arrays]
        flagged = add_latency_to_dq(frame, masks)
        for a, dq in zip(frame.arrays, before):
            assert np.array_equal(a.dq, dq)  # the input is not modified
        assert "LATENCY" not in frame.phu
        p = f["persistence"]
        assert flagged.phu["LATENCY"] == len(p["window"])
        assert [flagged.phu[f"LATIM{k:03d}"] for k in range(1, len(p["window"]) + 1)] == \
            p["window"]
        for i, (arr, raw) in enumerate(zip(flagged.arrays, frame.arrays)):
            truth_mask = planted(out, f["filename"], i + 1, "persist", arr.shape)
            assert np.array_equal((arr.dq & LATENCY) != 0, truth_mask)
            assert np.array_equal(arr.dq & ~np.uint16(LATENCY), raw.dq)  # other bits kept
            latent = planted(out, f["filename"], i + 1, "latent", arr.shape)
            n_unsaturated += int((truth_mask & ~latent).sum())
        n_frames_hit += any(p["n_pixels"])
        masks.append(latency_mask(frame))
    assert n_frames_hit == len(frames_of(truth, "science")) - 1
    assert n_unsaturated > 1000  # dithers move the stars: persistence on ordinary pixels
    sizes = [sum(a.saturated.nbytes + a.non_linear.nbytes for a in m.arrays) for m in masks]
    assert max(sizes) < 0.02 * sum(a.dq.nbytes for a in frame.arrays)  # compact records


def test_frames_in_any_order_and_only_earlier_ones(night, prepared):
    out, truth = night
    sci = frames_of(truth, "science")
    frames = [prepared[f["filename"]] for f in sci]
    shuffled = apply_latency(frames[::-1])[::-1]  # apply_latency keeps the input order
    for f, frame in zip(sci, shuffled):
        for i, arr in enumerate(frame.arrays):
            assert np.array_equal((arr.dq & LATENCY) != 0,
                                  planted(out, f["filename"], i + 1, "persist", arr.shape))


def test_window_edge_is_900_s_start_to_start(prepared, night):
    _, truth = night
    sci = frames_of(truth, "science")
    source = latency_mask(prepared[sci[0]["filename"]])
    target = prepared[sci[1]["filename"]]
    t = ut(target)
    assert sum(len(a.saturated) for a in source.arrays) > 0

    def n_flagged(delay, **kw):
        mask = dataclasses.replace(source, ut=t - dt.timedelta(seconds=delay))
        out = add_latency_to_dq(target, [mask], **kw)
        return sum(int(((a.dq & LATENCY) != 0).sum()) for a in out.arrays), out

    inside, out = n_flagged(899.999)
    assert inside == sum(len(a.saturated) + len(a.non_linear) for a in source.arrays)
    assert out.phu["LATENCY"] == 1 and out.phu["LATIM001"] == sci[0]["filename"]
    assert n_flagged(900.0)[0] == 0  # DRAGONS: t - t_earlier < time, strictly
    assert n_flagged(0.0)[0] == 0  # same start: not earlier
    assert n_flagged(-10.0)[0] == 0  # later frames never count
    assert n_flagged(1000.0, time=1200.0)[0] == inside
    # in the tutorial sequence (94 s cadence) 9 frames back is inside, 10 is not
    names = [f["filename"] for f in sci]
    assert sci[10]["persistence"]["window"] == names[1:10]


def test_saturated_only_without_non_linear(prepared, night):
    _, truth = night
    sci = frames_of(truth, "science")
    earlier = prepared[sci[0]["filename"]]
    out = add_latency_to_dq(prepared[sci[1]["filename"]], [latency_mask(earlier)],
                            non_linear=False)
    for a, e in zip(out.arrays, earlier.arrays):
        assert np.array_equal((a.dq & LATENCY) != 0, (e.dq & DQ["saturated"]) != 0)
    assert any(((e.dq & DQ["non_linear"]) != 0).any() for e in earlier.arrays)


def test_full_frame_earlier_flags_the_roi_it_covers(night, prepared):
    """The standard is a central ROI (rows really read: prepare's row fix); an earlier
    full-frame frame's bright pixels land on it through DETSEC."""
    out, truth = night
    std = frames_of(truth, "standard")[0]
    frame = prepared[std["filename"]]
    best = max(frames_of(truth, "science"), key=lambda f: sum(f["persistence"]["n_latent"]))
    mask = dataclasses.replace(latency_mask(prepared[best["filename"]]),
                               ut=ut(frame) - dt.timedelta(seconds=120))
    flagged = add_latency_to_dq(frame, [mask])
    n = 0
    for i, arr in enumerate(flagged.arrays):
        x0, y0, size = roi_window(truth, std, i)
        expected = full_array(out, truth, best["filename"], i + 1)[y0:y0 + size, x0:x0 + size]
        assert np.array_equal((arr.dq & LATENCY) != 0, expected)
        n += int(expected.sum())
    assert n > 20


def test_roi_earlier_flags_the_part_of_a_full_frame_it_covers(night, prepared):
    """An earlier ROI frame flags, on a later full frame, only the region it read."""
    out, truth = night
    std = frames_of(truth, "standard")[0]
    sci = frames_of(truth, "science")
    best = max(sci, key=lambda f: sum(f["persistence"]["n_latent"]))
    # an ROI frame whose bright pixels are the science frame's, cut to the ROI's rows
    roi = prepared[std["filename"]]
    arrays = []
    for i, arr in enumerate(roi.arrays):
        x0, y0, size = roi_window(truth, std, i)
        bright = full_array(out, truth, best["filename"], i + 1)[y0:y0 + size, x0:x0 + size]
        arrays.append(arr.with_(dq=np.where(bright, np.uint16(DQ["saturated"]), arr.dq)))
    roi = roi.with_(arrays=tuple(arrays))
    target = prepared[sci[0]["filename"]]
    mask = dataclasses.replace(latency_mask(roi), ut=ut(target) - dt.timedelta(seconds=60))
    flagged = add_latency_to_dq(target, [mask])
    n = 0
    for i, arr in enumerate(flagged.arrays):
        x0, y0, size = roi_window(truth, std, i)
        expected = np.zeros((SIZE, SIZE), dtype=bool)
        window = (slice(y0, y0 + size), slice(x0, x0 + size))
        expected[window] = full_array(out, truth, best["filename"], i + 1)[window]
        assert np.array_equal((arr.dq & LATENCY) != 0, expected)
        n += int(expected.sum())
    assert n > 20


def test_flats_one_array_at_a_time(night):
    """makeProcessedFlat streams single arrays; the lamps never reach the non-linear level."""
    out, truth = night
    flats = frames_of(truth, "flat_on") + frames_of(truth, "flat_off")
    bpm = load_bpm(out / BPM_NAME)
    frames = [preprocess(load_frame(out / f["filename"], indices=(2,)), bpm=bpm)
              for f in flats]
    for f, frame in zip(flats, apply_latency(frames)):
        assert frame.phu["LATENCY"] == len(f["persistence"]["window"])
        assert not ((frame.arrays[0].dq & LATENCY) != 0).any()
        assert not f["persistence"]["sources"] and not any(f["persistence"]["n_latent"])
    assert max(len(f["persistence"]["window"]) for f in flats) > 10  # 41 s cadence


def test_needs_dq_and_detsec(night):
    out, truth = night
    name = frames_of(truth, "science")[0]["filename"]
    raw = prepare(load_frame(out / name))
    with pytest.raises(ReductionError, match="DQ"):
        latency_mask(raw)
    frame = add_dq(raw)
    bad = frame.arrays[0].header.copy()
    bad["DETSEC"] = "[1:10,1:10]"
    broken = frame.with_(arrays=(frame.arrays[0].with_(header=bad),) + frame.arrays[1:])
    with pytest.raises(ReductionError, match="DETSEC"):
        latency_mask(broken)
