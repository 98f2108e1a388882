"""`.incomplete` markers in job output folders."""
import json
import logging
import os

import pytest

from monitor.markers import MARKER_NAME, remove_marker, write_marker


def test_written_on_start_and_removed_on_success(tmp_path):
    path = write_marker(str(tmp_path), "jobs/abc", "p-1", "2026-01-01T00:00:00+00:00")
    assert path == str(tmp_path / "jobs" / "abc" / MARKER_NAME)
    with open(path, encoding="utf-8") as fh:
        assert json.load(fh) == {"job_id": "p-1", "started_at": "2026-01-01T00:00:00+00:00"}
    assert os.listdir(tmp_path / "jobs" / "abc") == [MARKER_NAME]  # no temp file left behind
    assert remove_marker(str(tmp_path), "jobs/abc") == path
    assert not os.path.exists(path)
    assert remove_marker(str(tmp_path), "jobs/abc") is None  # already gone: fine


def test_rewrite_replaces_the_marker(tmp_path):
    write_marker(str(tmp_path), "j", "p-1", "2026-01-01T00:00:00+00:00")
    path = write_marker(str(tmp_path), "j", "p-1", "2026-01-01T00:05:00+00:00")
    with open(path, encoding="utf-8") as fh:
        assert json.load(fh)["started_at"] == "2026-01-01T00:05:00+00:00"


@pytest.mark.parametrize("folder", ["../escape", "a/../../escape", "/etc", "a\x00b", "", ".", "a/..",
                                    "..\\escape"])
def test_traversal_refused(tmp_path, folder):
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(ValueError):
        write_marker(str(root), folder, "p", None)
    with pytest.raises(ValueError):
        remove_marker(str(root), folder)
    assert not (tmp_path / "escape").exists()


def test_symlink_out_of_the_root_refused(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError):
        write_marker(str(root), "link", "p", None)
    assert not (tmp_path / "elsewhere" / MARKER_NAME).exists()


def test_none_root_or_folder_is_a_no_op(tmp_path):
    assert write_marker(None, "j", "p", None) is None
    assert write_marker(str(tmp_path), None, "p", None) is None
    assert remove_marker(None, "j") is None
    assert remove_marker(str(tmp_path), None) is None
    assert os.listdir(tmp_path) == []


def test_missing_output_root_is_a_no_op(tmp_path):
    root = tmp_path / "not-mounted"
    assert write_marker(str(root), "j", "p", None) is None
    assert remove_marker(str(root), "j") is None
    assert not root.exists()


def test_io_errors_are_logged_not_raised(tmp_path, caplog):
    (tmp_path / "j").write_text("a file where the job folder should be")
    with caplog.at_level(logging.WARNING, logger="monitor.markers"):
        assert write_marker(str(tmp_path), "j", "p", None) is None
    assert "could not write marker" in caplog.text
    assert os.listdir(tmp_path) == ["j"]
