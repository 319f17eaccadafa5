"""The headless-browser page check (tests/browser.py) against real pages in a real Chromium: what it
reports for console errors, loaded and missing images, uncaught exceptions and a page that never loads,
and that it leaves no browser process or profile behind."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from tests.browser import PageCheck, _processes_mentioning, check_page, chromium_available


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if chromium_available():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("/usr/bin/chromium is missing but installable here: run `bash scripts/setup.sh`")
    pytest.skip("/usr/bin/chromium is missing and scripts/setup.sh cannot install it (needs root and apt-get)")


def singleton_folders() -> set[Path]:
    """Chromium's per-instance folders in its temporary directory (the singleton socket)."""
    return set(Path(os.environ.get("TMPDIR") or "/tmp").glob("org.chromium.Chromium.*"))


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The browser's temporary profile is created here, so a test can see whether it was removed."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    before = singleton_folders()
    yield folder
    assert singleton_folders() - before == set(), "the browser left its singleton folder behind"


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of the given size, written by hand (a red-to-blue gradient)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"".join(bytes((255 * x // width, 0, 255 - 255 * x // width)) for x in range(width))
                    for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def page(folder: Path, body: str, title: str = "report") -> Path:
    path = folder / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                    f"<body>{body}</body></html>")
    return path


def assert_cleaned_up(profiles: Path) -> None:
    assert list(profiles.iterdir()) == [], "the browser profile was not removed"
    assert _processes_mentioning(str(profiles)) == [], "a browser process outlived the check"


def test_console_error_and_a_loaded_image(tmp_path: Path, profiles: Path) -> None:
    (tmp_path / "curve.png").write_bytes(png(37, 11))
    check = check_page(page(tmp_path, '<img src="curve.png" alt="curve">'
                                      '<script>console.error("reward went NaN at step", 7)</script>',
                            title="run demo"))
    assert check.title == "run demo"
    assert [(m.level, m.source, m.text) for m in check.console] == [("error", "console", "reward went NaN at step 7")]
    assert check.console[0].url == check.url
    [image] = check.images
    assert (image.src, image.complete, image.natural_width, image.natural_height) == ("curve.png", True, 37, 11)
    assert image.loaded and image.url == (tmp_path / "curve.png").as_uri()
    assert check.exceptions == [] and check.failed_requests == []
    assert check.problems() == ["console console error: reward went NaN at step 7"]
    assert_cleaned_up(profiles)


def test_a_missing_image_is_not_loaded_and_a_failed_request(tmp_path: Path, profiles: Path) -> None:
    run = tmp_path / "run 1 – été"  # a space and non-ASCII letters in the file:// URL
    run.mkdir()
    (run / "present.png").write_bytes(png(5, 4))
    check = check_page(page(run, '<img src="present.png"><img src="plots/missing.png">'))
    present, missing = check.images
    assert present.loaded and (present.natural_width, present.natural_height) == (5, 4)
    assert missing.src == "plots/missing.png"
    assert not missing.loaded and missing.natural_width == 0 and missing.natural_height == 0
    [failed] = check.failed_requests
    assert failed.url == (run / "plots" / "missing.png").as_uri()
    assert failed.error == "net::ERR_FILE_NOT_FOUND" and failed.resource_type == "Image"
    # Chromium logs the failed load to the console itself (source "network"), besides the request event.
    assert [(m.level, m.source) for m in check.console] == [("error", "network")]
    assert "image not loaded: plots/missing.png" in check.problems()
    assert_cleaned_up(profiles)


def test_an_uncaught_exception_is_reported(tmp_path: Path, profiles: Path) -> None:
    check = check_page(page(tmp_path, "<script>function draw() { throw new TypeError('no data for chart'); }"
                                      "draw();</script><p>after</p>"))
    [exception] = check.exceptions
    assert exception.startswith("TypeError: no data for chart") and "draw" in exception
    assert check.console == [] and check.images == []
    assert_cleaned_up(profiles)


def test_a_healthy_report_has_no_problems(tmp_path: Path, profiles: Path) -> None:
    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot([0, 1, 2], [0.1, 0.4, 0.3])
    fig.savefig(tmp_path / "reward.png")
    plt.close(fig)
    check: PageCheck = check_page(page(tmp_path, '<h1>Run</h1><img src="reward.png">'))
    assert check.problems() == []
    assert [(i.natural_width, i.natural_height) for i in check.images] == [(150, 100)]
    assert 0 < check.elapsed_s < 60
    assert_cleaned_up(profiles)


def test_a_page_that_never_loads_times_out_and_the_browser_is_still_stopped(tmp_path: Path, profiles: Path) -> None:
    hung = page(tmp_path, "<script>for (;;) {}</script>")
    with pytest.raises(TimeoutError):
        check_page(hung, timeout_s=5)
    assert_cleaned_up(profiles)


def test_a_missing_page_is_an_error_before_any_browser_starts(tmp_path: Path, profiles: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_page(tmp_path / "absent.html")
    assert_cleaned_up(profiles)
