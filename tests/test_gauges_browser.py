"""Issue 4 in a real browser: the gauges say "n/a" (with the reason) for what is unknown, never 0%, and show
one GPU + VRAM pair per GPU (name, temperature, colour by threshold) from a fake nvidia-smi."""
from __future__ import annotations

import os


from browser import requires_chromium
from live import LiveServer, wait_for
from test_telemetry import H100, RTX, fake_smi

pytestmark = requires_chromium


def _open(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/admin/queue")
    return context, page, errors


def test_unknown_gpu_values_read_na_with_the_reason(fake_comfy, tmp_path, monkeypatch, browser):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))   # no nvidia-smi; the fake ComfyUI reports a CPU device
    server = LiveServer(fake_comfy, str(tmp_path / "data"))
    context, page, errors = _open(browser, server)
    try:
        wait_for(lambda: server.monitor.telemetry.snapshot().get("sampled_at"), what="a telemetry sample")
        page.wait_for_function("() => document.querySelector('#gauge-gpu0 .g-text').textContent.includes('CPU')",
                               timeout=15_000)
        for key in ("gpu0", "vram0"):
            gauge = page.locator(f"#gauge-{key}")
            assert gauge.locator(".g-val").inner_text() == "n/a"
            assert "ComfyUI runs on the CPU" in gauge.locator(".g-text").inner_text()
            assert gauge.locator(".g-bar").get_attribute("aria-valuetext") == "not available"
        for key in ("ram", "disk"):   # true values exist here
            assert page.locator(f"#gauge-{key} .g-val").inner_text().endswith("%")
        assert errors == []
    finally:
        context.close()
        server.stop_app()


def test_two_gpus_get_a_gauge_pair_each_with_name_temperature_and_level(fake_comfy, tmp_path, monkeypatch,
                                                                        browser):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_smi(str(bin_dir), rows=[RTX, H100])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    server = LiveServer(fake_comfy, str(tmp_path / "data"))
    context, page, errors = _open(browser, server)
    try:
        page.wait_for_selector("#gauge-vram1", timeout=15_000)
        g = {k: page.locator(f"#gauge-{k}") for k in ("gpu0", "vram0", "gpu1", "vram1")}
        assert g["gpu0"].locator(".g-val").inner_text() == "37%"
        assert "RTX 4090" in g["gpu0"].locator(".g-text").inner_text()
        assert "61°C" in g["gpu0"].locator(".g-text").inner_text()
        assert g["vram0"].locator(".g-val").inner_text() == "25%"       # 6141 of 24564 MiB
        assert g["gpu1"].locator(".g-val").inner_text() == "92%"
        assert "hot" in g["gpu1"].get_attribute("class")                  # above 85 %
        assert "hot" in g["vram1"].get_attribute("class")                 # 70144 of 81559 MiB = 86 %
        assert "°C" not in g["gpu1"].locator(".g-text").inner_text()      # [N/A] temperature: not invented
        assert errors == []
    finally:
        context.close()
        server.stop_app()
