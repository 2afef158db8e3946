"""Budget parsing and formatting."""

import math

import pytest

from vlrnn_planner import InvalidInputError, format_bytes, parse_budget


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("8GB", 8 * 10**9),
        ("8gb", 8 * 10**9),
        ("8GiB", 8 * 2**30),
        ("8gib", 8 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("512MB", 512 * 10**6),
        ("512 MiB", 512 * 2**20),
        ("100B", 100),
        ("2KB", 2000),
        ("2KiB", 2048),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        (4096, 4096),
    ],
)
def test_sizes(spec, expected):
    budget = parse_budget(spec)
    assert budget.bytes == expected and budget.share is None
    assert budget.resolve(available_bytes=None) == expected


@pytest.mark.parametrize("spec, share", [("80%", 0.8), ("100%", 1.0), ("12.5%", 0.125), (0.5, 0.5), (1.0, 1.0)])
def test_shares(spec, share):
    budget = parse_budget(spec)
    assert budget.bytes is None and math.isclose(budget.share, share)
    assert budget.resolve(available_bytes=10**10) == int(share * 10**10)


@pytest.mark.parametrize(
    "spec",
    ["80%%", "8 GB/s", "8XB", "8G", "0GB", "0", 0, -1, "-1GB", "-5%", "0%", "101%", "nan GB", "inf GB",
     float("nan"), 0.0, 1.5, -0.2, True, None, [8], "", "GB", "0.1B"],
)
def test_rejected(spec):
    with pytest.raises(InvalidInputError) as info:
        parse_budget(spec)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("vlrnn_planner:")
    assert '"8GB"' in message and '"80%"' in message  # names the accepted forms


def test_share_needs_device_memory():
    with pytest.raises(InvalidInputError, match="budget=\"8GB\""):
        parse_budget("80%").resolve(available_bytes=None)


@pytest.mark.parametrize(
    "n, binary, text",
    [
        (8 * 10**9, False, "8 GB"),
        (1_500_000_000, False, "1.5 GB"),
        (8 * 2**30, True, "8 GiB"),
        (999, False, "999 B"),
        (1000, False, "1 KB"),
        (999_999, False, "1 MB"),
        (123_456_789, False, "123 MB"),
        (1536, True, "1.5 KiB"),
        (-2_500_000, False, "-2.5 MB"),
    ],
)
def test_format(n, binary, text):
    assert format_bytes(n, binary=binary) == text


@pytest.mark.parametrize("n", [1, 999, 1234, 98_765, 4_321_000, 7 * 10**9 + 12345, 3 * 2**40])
@pytest.mark.parametrize("binary", [False, True])
def test_format_round_trips(n, binary):
    back = parse_budget(format_bytes(n, binary=binary)).bytes
    assert abs(back - n) <= 0.005 * n
