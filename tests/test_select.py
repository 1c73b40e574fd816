"""The dataselect expression language: DRAGONS semantics, and nothing is ever executed."""

import datetime as dt

import pytest
from astropy.io import fits

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.select import compile_expression
from gsaoi_watch.errors import ExpressionError


def info(**phu):
    h = fits.Header()
    base = {"INSTRUME": "GSAOI", "OBSERVAT": "Gemini-South", "OBSTYPE": "OBJECT",
            "OBSCLASS": "science", "OBJECT": "NGC5128", "FILTER1": "Kshort_G1105",
            "FILTER2": "Clear", "EXPTIME": 60.0, "DATE-OBS": "2017-05-05",
            "UT": "01:10:31.0", "LT": "21:10:31.0", "WAVELENG": 21500.0}
    base.update(phu)
    for k, v in base.items():
        if v is not None:
            h[k] = v
    ext = fits.Header()
    ext["ARRAYID"] = "H2RG-032-074"
    return FrameInfo(h, [ext] * 4)


@pytest.mark.parametrize("expr, expected", [
    ("filter_name=='Kshort'", True),
    ("filter_name=='Kshort_G1105&Clear'", False),
    ("exposure_time==60.", True),
    ("exposure_time==60.5", True),          # within 1 %
    ("exposure_time==61", False),
    ("exposure_time!=60.3", False),
    ("exposure_time>59 and exposure_time<61", True),
    ('observation_class=="science"', True),
    ('(observation_class=="science" and exposure_time==60.)', True),
    ('(exposure_time==60.3 and observation_class=="science")', True),
    ('observation_class=="partnerCal" or object=="NGC5128"', True),
    ('not observation_class=="science"', False),
    ("ut_date=='2017-05-05'", True),
    ("ut_date>'2017-05-04'", True),
    ("ut_time<'01:30:00'", True),
    ("ut_time>'01:30:00'", False),
    ("ut_datetime>='2017-05-05 01:10:31'", True),
    ("ut_datetime<'2017-05-05T01:00:00'", False),
    ("local_time=='21:10:31'", True),
    ("central_wavelength==2.15e-6", True),
    ("'Kshort'==filter_name", True),
    ("59<exposure_time<=60", True),
    ("True", True),
    ("airmass>1", False),                   # descriptor without a value: false, no error
])
def test_dragons_semantics(expr, expected):
    assert compile_expression(expr)(info()) is expected


def test_strict_compares_raw_values():
    assert compile_expression("filter_name=='Kshort_G1105&Clear'", strict=True)(info())
    assert not compile_expression("filter_name=='Kshort'", strict=True)(info())
    assert not compile_expression("exposure_time==60.5", strict=True)(info())


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch PWNED')",
    "object.__class__",
    "exposure_time.__class__",
    "[x for x in ()]",
    "(lambda: 1)()",
    "filter_name[0]=='K'",
    "open('PWNED', 'w')",
    "exposure_time + 1 > 3",
    "__builtins__",
    "exposure_time == (yield)",
    "(x := 1)",
    "f'{exposure_time}'=='60'",
    "nonexistent_descriptor == 3",
    "exposure_time ==",
    "exposure_time in (60, 30)",
])
def test_injection_and_nonsense_are_rejected(expr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExpressionError):
        compile_expression(expr)
    assert not (tmp_path / "PWNED").exists()


def test_unknown_descriptor_lists_valid_ones():
    with pytest.raises(ExpressionError, match="valid: .*exposure_time"):
        compile_expression("exposure_tim==60")


def test_bad_date_is_a_clear_error_before_any_file_is_read():
    with pytest.raises(ExpressionError, match=r"cannot read '5 May 2017' as a date \(YYYY"):
        compile_expression("ut_date=='5 May 2017'")
    with pytest.raises(ExpressionError, match="as a time"):
        compile_expression("'25:61:00' > ut_time")
    with pytest.raises(ExpressionError, match="as a date and time"):
        compile_expression("ut_datetime < '2017-05-05'")


UNHANDLED = [
    ("not " * 990 + "True", "nested"),
    ("not (" * 60 + "True" + ")" * 60, "nested more than 50"),
    ("(" * 300 + "True" + ")" * 300, "nested"),
    ("exposure_time == " + "-" * 3900 + "1", ""),
    (" or ".join(["exposure_time==60"] * 200_000), "too long"),
    ("exposure_time == " + "9" * 3900, None),   # a long but valid literal
    ("exposure_time == 'sixty'", "cannot compare a number with text"),
    ("'Kshort' < exposure_time", "cannot compare text with a number"),
    ("filter_name > 3", "cannot compare text with a number"),
    ("gain > 2", "cannot compare a per-array list with a number"),
    ("ut_date > 5", "cannot compare a date with a number"),
    ("ut_date == ut_time", "cannot compare a date with a time"),
    ("is_ao > False", "only be compared with == or !="),
    ("object < None", "None can only be compared"),
    ("1 == 'a'", "cannot compare a number with text"),
    ("exposure_time == True", "cannot compare a number with true or false"),
    ("True\x00", "cannot parse"),
]


@pytest.mark.parametrize(("expr", "message"), UNHANDLED,
                         ids=[f"case{i}" for i in range(len(UNHANDLED))])
def test_what_the_language_cannot_handle_is_one_expression_error(expr, message):
    if message is None:
        assert compile_expression(expr)(info()) is False
        return
    with pytest.raises(ExpressionError) as err:
        compile_expression(expr)
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 300


def test_dataselect_command_never_shows_a_traceback(tmp_path):
    import subprocess
    import sys

    from gsaoi_watch.sim import simulate_night

    simulate_night(tmp_path, seed=2, size=64, workers=1, only=["standard"])
    frames = sorted(str(p) for p in tmp_path.glob("S*.fits"))
    for expr, message in [(e, m) for e, m in UNHANDLED if m is not None and "\x00" not in e] + [
            ("ut_date=='2017-13-45'", "as a date"),
            ("exposure_time ==", "cannot parse")]:
        expr = expr[:100_000]  # one argument is at most 128 kB (MAX_ARG_STRLEN)
        proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "dataselect", *frames,
                               "--expr", expr], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (expr[:60], proc.stderr[-500:])
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dataselect: "), proc.stderr[-500:]
        assert message in lines[0] and "Traceback" not in proc.stderr
        assert proc.stdout == ""
    proc = subprocess.run([sys.executable, "-m", "gsaoi_watch", "dataselect", *frames,
                           "--expr", "ut_date=='2017-05-04' and exposure_time > 1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 4


def test_date_types_are_real_dates():
    i = info()
    assert i.ut_date() == dt.date(2017, 5, 5)
    assert i.ut_time() == dt.time(1, 10, 31)
