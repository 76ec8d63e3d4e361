"""common.getopt: the GNU getopt_long scanner both tools word errors from."""

from __future__ import annotations

from pyqemu.common.getopt import scan


def test_permutes_and_takes_abbreviations() -> None:
    opts, operands, error = scan(
        ["a", "-qf", "raw", "--out=json", "b", "--", "-x"], "f:q", {"output": True}
    )
    assert error is None
    assert opts == [("-q", None), ("-f", "raw"), ("--output", "json")]
    assert operands == ["a", "b", "-x"]


def test_stop_at_operand() -> None:
    opts, operands, error = scan(["-h", "info", "-f"], "h", {}, stop_at_operand=True)
    assert (opts, operands, error) == ([("-h", None)], ["info", "-f"], None)


def test_errors_keep_the_options_before_them() -> None:
    cases = {
        ("-q", "-x"): ("invalid", "x", False),
        ("-q", "--nope"): ("unrecognized", "", True),
        ("-q", "--o"): ("ambiguous", "", True),
        ("-q", "--other=1"): ("needless", "other", True),
        ("-q", "--output"): ("missing", "output", True),
        ("-q", "-f"): ("missing", "f", False),
    }
    for args, (kind, option, long) in cases.items():
        opts, _, error = scan(list(args), "f:q", {"output": True, "other": False})
        assert opts == [("-q", None)]
        assert error is not None
        assert (error.kind, error.option, error.long, error.arg) == (kind, option, long, args[1])


def test_plain_getopt_reads_double_dash_as_short_options() -> None:
    opts, _, error = scan(["--q"], "q", None)
    assert error is not None and error.kind == "invalid" and error.option == "-"
    assert opts == []
