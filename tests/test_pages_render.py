"""Server side of the /admin/queue page: routes, fragments, filters, escaping (no browser needed)."""
from __future__ import annotations

import copy

import pytest

from live import recorded_prompt
from monitor.web import pages

XSS = "<img src=x onerror=alert(1)>"


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (8375186227, "7.8 GiB"),
    (24 * 2**30, "24.0 GiB"), (812 * 2**30, "812 GiB"), (-1, "n/a"), ("junk", "n/a"),
])
def test_bytes_filter(value, text):
    assert pages.format_bytes(value) == text


@pytest.mark.parametrize("value, text", [
    (None, ""), (0, "0s"), (4.4, "4s"), (59.6, "1m 00s"), (65, "1m 05s"), (3725, "1h 02m"), (-3, ""),
])
def test_duration_filter(value, text):
    assert pages.format_duration(value) == text


def test_percent_and_level_helpers():
    assert pages.format_percent(None) == "n/a"
    assert pages.format_percent(67.5) == "68%"
    assert pages.clamp_pct(140) == 100.0 and pages.clamp_pct(None) == 0.0
    assert [pages.level(v) for v in (None, 10, 65, 90)] == ["na", "ok", "warm", "hot"]


def test_view_url_and_thumbnail_choice():
    img = {"filename": "a b&c.png", "subfolder": "x/y", "type": "output"}
    assert pages.view_url(img) == "/api/view?filename=a+b%26c.png&subfolder=x%2Fy&type=output"
    assert pages.view_url(img, thumb=True).endswith("&preview=webp%3B75")
    assert pages.view_url("in.png") == "/api/view?filename=in.png&subfolder=&type=input"
    assert pages.view_url(None) is None
    job = {"outputs": [{"node_id": "9", "title": "Save", "images": [img]}], "input_image": "in.png"}
    assert "a+b%26c.png" in pages.job_thumb(job)
    assert "in.png" in pages.job_thumb({"outputs": [], "input_image": "in.png"})
    assert pages.job_thumb({"outputs": [], "input_image": None}) is None


def test_sparkline_points_are_numbers_only():
    pts = pages.sparkline([[0, 0], [5, 50], [10, 100], [11, None], ["bad", 3]])
    assert pts == "0.0,24.0 50.0,12.0 100.0,0.0"
    assert pages.sparkline([[1, 2]]) == ""


def test_routes_and_fragments(live_server):
    r = live_server.get("/", allow_redirects=False)
    assert r.status_code in (301, 302) and r.headers["Location"].endswith("/admin/queue")
    page = live_server.get("/admin/queue")
    assert page.status_code == 200
    for frag_id in ('id="gauges"', 'id="current"', 'id="cards"', 'id="overlay"'):
        assert frag_id in page.text
    for path, root in (("/admin/queue/cards", 'id="cards"'), ("/admin/queue/current", 'id="current"'),
                       ("/admin/queue/gauges", 'id="gauges"')):
        r = live_server.get(path, headers={"HX-Request": "true"})
        assert r.status_code == 200 and root in r.text, path
        assert "<html" not in r.text and r.headers["Cache-Control"] == "no-store"
    assert "No jobs in queue" in live_server.get("/admin/queue/cards").text
    assert "No jobs running" in live_server.get("/admin/queue/current").text
    missing = live_server.get("/admin/jobs/nope/overlay")
    assert missing.status_code == 404 and "Job not found" in missing.text


def test_user_data_is_escaped_and_inside_hx_disable(live_server):
    live_server.fake.pause()
    try:
        graph = copy.deepcopy(recorded_prompt())
        graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": XSS}}
        job = live_server.submit(graph, workflow_name='<b hx-get="/x">n</b>')
        cards = live_server.get("/admin/queue/cards").text
        assert "&lt;img src=x onerror=alert(1)&gt;" in cards and XSS not in cards
        assert "&lt;b hx-get=&#34;/x&#34;&gt;" in cards and '<b hx-get="/x">' not in cards
        assert '<div class="info" hx-disable>' in cards
        overlay = live_server.get(f"/admin/jobs/{job['id']}/overlay").text
        assert XSS not in overlay and "&lt;img src=x onerror=alert(1)&gt;" in overlay
        assert '<div class="ov-scroll" hx-disable>' in overlay
    finally:
        live_server.fake.resume()


def test_the_output_strip_shows_saved_images_and_videos_labelled_by_node_title(live_server):
    """Saved outputs (SaveImage, video) belong in the strip with the temp previews, each under its node's title."""
    outputs = [{"node_id": "9", "title": "Save final", "text": [],
                "images": [{"filename": "final.png", "subfolder": "runs", "type": "output", "kind": "images"}]},
               {"node_id": "12", "title": "Save clip", "text": [],
                "images": [{"filename": "clip.mp4", "subfolder": "", "type": "output", "kind": "videos"}]},
               {"node_id": "4", "title": "Preview", "text": [],
                "images": [{"filename": "tmp.png", "subfolder": "", "type": "temp", "kind": "images"}]}]
    with live_server.app.test_request_context():
        macro = live_server.app.jinja_env.get_template("_macros.html").module.output_strip
        html = str(macro(outputs))
    assert html.count('class="strip-item"') == 3
    assert "Save final" in html and "Save clip" in html and "Preview" in html
    assert '<video src="/api/view?filename=clip.mp4' in html and "clip.mp4&amp;subfolder=&amp;type=output&amp;preview" not in html
    assert 'alt="Save final output"' in html


def test_output_folder_from_the_record_or_the_saved_outputs(live_server):
    with live_server.app.test_request_context():
        assert pages.output_folder({"output_dir": "/data/out/job1"}) == "/data/out/job1"
        saved = {"outputs": [{"images": [{"filename": "a.png", "subfolder": "demo/x", "type": "output"}]}]}
        assert pages.output_folder(saved) == "ComfyUI output/demo/x"
        assert pages.output_folder({"outputs": [{"images": [{"filename": "t.png", "type": "temp"}]}]}) is None
