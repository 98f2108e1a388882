"""`.incomplete` markers: a small JSON file in a job's output folder from its start until it succeeds."""
from __future__ import annotations

import json
import logging
import os
import tempfile

log = logging.getLogger(__name__)

MARKER_NAME = ".incomplete"


def marker_path(output_root: str, job_folder: str) -> str:
    """The marker's path; ValueError unless job_folder is a relative path that stays inside output_root."""
    if not isinstance(job_folder, str) or not job_folder.strip() or "\x00" in job_folder:
        raise ValueError(f"invalid job folder {job_folder!r}")
    parts = job_folder.replace("\\", "/").split("/")
    if os.path.isabs(job_folder) or job_folder.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"job folder must be a relative path inside the output root: {job_folder!r}")
    root = os.path.realpath(output_root)
    folder = os.path.realpath(os.path.join(root, job_folder))
    if folder == root or os.path.commonpath([root, folder]) != root:  # also catches symlinks out of the root
        raise ValueError(f"job folder {job_folder!r} resolves outside the output root {output_root}")
    return os.path.join(folder, MARKER_NAME)


def write_marker(output_root, job_folder, job_id, started_at) -> str | None:
    """Write the marker atomically; returns its path, or None when skipped or on an I/O error (logged)."""
    if output_root is None or job_folder is None:
        return None
    path = marker_path(output_root, job_folder)
    if not os.path.isdir(output_root):
        # A missing root means ComfyUI's output folder is not mounted here: don't invent one.
        log.warning("output root %s does not exist; no marker for job %s", output_root, job_id)
        return None
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=MARKER_NAME + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"job_id": job_id, "started_at": started_at}, fh)
        os.replace(tmp, path)
        return path
    except OSError as exc:
        log.warning("could not write marker %s: %s", path, exc)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None


def remove_marker(output_root, job_folder) -> str | None:
    """Remove the marker; returns its path if one was removed, else None. I/O errors are logged."""
    if output_root is None or job_folder is None:
        return None
    path = marker_path(output_root, job_folder)
    try:
        os.unlink(path)
        return path
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("could not remove marker %s: %s", path, exc)
        return None
