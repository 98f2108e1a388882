"""Workflow templates: loading, typed filling, seeds, output folders and parameter validation."""
import json
import logging
import os
import random

import pytest

import recordings
from monitor.workflows import (SEED_RANDOM_LIMIT, ParamError, Workflow, WorkflowError, load_workflow,
                               load_workflows, new_job_folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_TYPES = {"EmptyImage", "ImageInvert", "ImageScale", "SaveImage", "PreviewImage"}

SAMPLER = {
    "name": "Sampler probe",
    "description": "two outputs, a seed and every parameter type",
    "parameters": {
        "seed": {"type": "seed", "default": -1},
        "steps": {"type": "int", "default": 20, "min": 1, "max": 100},
        "cfg": {"type": "float", "default": 7.5, "min": 0, "max": 30},
        "text": {"type": "string", "default": "a cat"},
        "upscale": {"type": "bool", "default": False},
        "method": {"type": "choice", "default": "area", "choices": ["area", "bilinear", 2]},
        "size": {"type": "int", "description": "required: no default"},
    },
    "prompt": {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": "{{size}}", "height": "{{size}}", "batch_size": 1, "color": 0}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": "{{seed}}", "steps": "{{steps}}", "cfg": "{{cfg}}", "image": ["1", 0]},
              "_meta": {"title": "Sampler {{steps}} steps"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of {{text}}, upscale={{upscale}}"}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "{{method}}",
                                                     "width": 8, "height": 8, "crop": "disabled"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "probes/../../etc/x"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": ""}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    },
}


def write(directory, name, doc):
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def sampler(tmp_path) -> Workflow:
    return load_workflow(write(tmp_path, "sampler.json", SAMPLER))


def test_load_and_summary(sampler):
    summary = sampler.summary()
    assert summary["id"] == "sampler"
    assert summary["name"] == "Sampler probe"
    assert summary["description"] == "two outputs, a seed and every parameter type"
    params = summary["parameters"]
    assert list(params) == ["seed", "steps", "cfg", "text", "upscale", "method", "size"]
    assert params["steps"] == {"type": "int", "required": False, "default": 20, "min": 1, "max": 100}
    assert params["method"]["choices"] == ["area", "bilinear", 2]
    assert params["size"] == {"type": "int", "required": True, "description": "required: no default"}
    json.dumps(summary)  # goes over the wire as is


def test_typed_placeholders_and_text_substitution(sampler):
    r = sampler.render({"size": 64, "seed": 5, "cfg": "2.5", "upscale": "true"}, "monitor/sampler/abcd1234")
    assert r.prompt["1"]["inputs"]["width"] == 64 and r.prompt["1"]["inputs"]["height"] == 64
    inputs = r.prompt["3"]["inputs"]
    assert inputs["steps"] == 20 and type(inputs["steps"]) is int
    assert inputs["cfg"] == 2.5 and type(inputs["cfg"]) is float
    assert inputs["image"] == ["1", 0]
    assert r.prompt["3"]["_meta"]["title"] == "Sampler 20 steps"
    assert r.prompt["4"]["inputs"]["text"] == "photo of a cat, upscale=true"
    assert r.prompt["5"]["inputs"]["upscale_method"] == "area"
    assert r.params == {"seed": 5, "steps": 20, "cfg": 2.5, "text": "a cat", "upscale": True,
                        "method": "area", "size": 64}
    assert "{{" not in json.dumps(r.prompt)


def test_render_leaves_the_template_untouched(sampler):
    before = json.dumps(sampler.prompt, sort_keys=True)
    r = sampler.render({"size": 8}, "monitor/sampler/aaaa")
    r.prompt["3"]["inputs"]["image"].append("mutated")
    assert json.dumps(sampler.prompt, sort_keys=True) == before
    assert sampler.render({"size": 8}, "f").prompt["3"]["inputs"]["image"] == ["1", 0]


def test_seed_minus_one_is_resolved_and_recorded(sampler):
    r = sampler.render({"size": 8}, "f", rng=random.Random(7))
    seed = r.prompt["3"]["inputs"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < SEED_RANDOM_LIMIT
    assert r.seeds == [seed] and r.params["seed"] == seed
    assert sampler.render({"size": 8, "seed": "-1"}, "f", rng=random.Random(7)).seeds == [seed]
    assert sampler.render({"size": 8}, "f", rng=random.Random(8)).seeds != [seed]


def test_explicit_seed_is_kept(sampler):
    for given in (0, 42, "42", 2 ** 64 - 1):
        r = sampler.render({"size": 8, "seed": given}, "f")
        assert r.seeds == [int(given)] and r.prompt["3"]["inputs"]["seed"] == int(given)


def test_seed_without_default_means_random(tmp_path):
    doc = {"parameters": {"s": {"type": "seed"}},
           "prompt": {"1": {"class_type": "KSampler", "inputs": {"seed": "{{s}}"}}}}
    wf = load_workflow(write(tmp_path, "s.json", doc))
    assert not wf.parameters["s"].required
    assert 0 <= wf.render({}, "f").seeds[0] < SEED_RANDOM_LIMIT


def test_every_filename_prefix_points_into_the_job_folder(sampler):
    folder = new_job_folder("sampler", "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc")
    r = sampler.render({"size": 8}, folder)
    assert r.prompt["7"]["inputs"]["filename_prefix"] == "monitor/sampler/0f1e2d3c/x"
    assert r.prompt["8"]["inputs"]["filename_prefix"] == "monitor/sampler/0f1e2d3c/output"
    assert "filename_prefix" not in r.prompt["9"]["inputs"]


def test_prefix_from_a_parameter_and_linked_prefix(tmp_path):
    doc = {"parameters": {"p": {"type": "string", "default": "shots\\..\\day1"}},
           "prompt": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{p}}"}},
                      "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["9", 0]}},
                      "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a/.."}}}}
    r = load_workflow(write(tmp_path, "p.json", doc)).render({}, "monitor/p/12345678")
    assert r.prompt["1"]["inputs"]["filename_prefix"] == "monitor/p/12345678/day1"
    assert r.prompt["2"]["inputs"]["filename_prefix"] == "monitor/p/12345678/output"
    assert r.prompt["3"]["inputs"]["filename_prefix"] == "monitor/p/12345678/output"


@pytest.mark.parametrize("workflow_id, prompt_id", [
    ("example_invert", "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"),
    ("../../etc", "../../x"),
    ("/abs", "/tmp/abc"),
    (None, ""),
    ("a" * 200, "..\\..\\.."),
    ("ok", "...."),
])
def test_job_folder_never_escapes(workflow_id, prompt_id):
    folder = new_job_folder(workflow_id, prompt_id)
    parts = folder.split("/")
    assert not folder.startswith("/") and "\\" not in folder
    assert ".." not in parts and "." not in parts and "" not in parts
    assert parts[0] == "monitor" and len(parts) == 3


def test_job_folder_shape():
    assert new_job_folder("example_invert", "0f1e2d3c-aaaa") == "monitor/example_invert/0f1e2d3c"
    assert new_job_folder(None, "0f1e2d3c-aaaa") == "monitor/raw/0f1e2d3c"


@pytest.mark.parametrize("params, message", [
    ({"size": 8, "nope": 1, "other": 2}, "unknown parameter(s): nope, other"),
    ({}, "size: required"),
    ({"size": None}, "size: required"),
    ({"size": "eight"}, "size: expected an integer"),
    ({"size": "8.5"}, "size: expected an integer"),
    ({"size": 8.5}, "size: expected an integer"),
    ({"size": True}, "size: expected an integer"),
    ({"size": 8, "steps": 0}, "steps: 0 is below the minimum 1"),
    ({"size": 8, "steps": "101"}, "steps: 101 is above the maximum 100"),
    ({"size": 8, "cfg": "warm"}, "cfg: expected a number"),
    ({"size": 8, "cfg": "nan"}, "cfg: expected a number"),
    ({"size": 8, "cfg": 31}, "cfg: 31.0 is above the maximum 30"),
    ({"size": 8, "text": 5}, "text: expected a string"),
    ({"size": 8, "upscale": "yes"}, "upscale: expected true or false"),
    ({"size": 8, "upscale": 1}, "upscale: expected true or false"),
    ({"size": 8, "method": "cubic"}, "method: 'cubic' is not one of: area, bilinear, 2"),
    ({"size": 8, "seed": -2}, "seed: a seed must be -1 (random) or between 0"),
    ({"size": 8, "seed": 2 ** 64}, "seed: a seed must be -1 (random) or between 0"),
    ({"size": 8, "seed": "lucky"}, "seed: expected an integer"),
])
def test_validation_errors(sampler, params, message):
    with pytest.raises(ParamError) as info:
        sampler.render(params, "f")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_all_problems_reported_at_once(sampler):
    with pytest.raises(ParamError) as info:
        sampler.render({"bogus": 1, "steps": 0}, "f")
    text = str(info.value)
    assert "bogus" in text and "steps:" in text and "size: required" in text


def test_params_must_be_an_object(sampler):
    with pytest.raises(ParamError, match="params must be an object"):
        sampler.render(["size", 8], "f")


def test_cli_strings_are_coerced(sampler):
    r = sampler.render({"size": "16", "steps": "+3", "cfg": "1e1", "upscale": "FALSE", "method": "2",
                        "seed": "9"}, "f")
    assert r.params["size"] == 16 and r.params["steps"] == 3 and r.params["cfg"] == 10.0
    assert r.params["upscale"] is False and r.params["method"] == 2 and r.seeds == [9]


@pytest.mark.parametrize("doc, message", [
    ({"prompt": {"1": {"class_type": "X", "inputs": {"a": "{{ghost}}"}}}}, "not declared in parameters: ghost"),
    ({"parameters": {}, "prompt": {"1": {"class_type": "X", "inputs": {"a": "x {{ghost}} y"}}}}, "ghost"),
    ({"parameters": {"a": {"type": "integer"}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "type must be one of"),
    ({"parameters": {"a": {"type": "int", "default": "big"}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "bad default"),
    ({"parameters": {"a": {"type": "int", "default": 5, "max": 3}},
      "prompt": {"1": {"class_type": "X", "inputs": {}}}}, "bad default"),
    ({"parameters": {"a": {"type": "choice"}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "choices must be a non-empty list"),
    ({"parameters": {"a": {"type": "string", "min": 1}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "min only applies"),
    ({"parameters": {"a": {"type": "int", "defualt": 1}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "unknown key(s) defualt"),
    ({"parameters": {"1a": {"type": "int"}}, "prompt": {"1": {"class_type": "X", "inputs": {}}}},
     "parameter name"),
    ({"prompt": {}}, "non-empty API-format graph"),
    ({"prompt": {"1": {"inputs": {}}}}, "class_type"),
    ([1, 2], "JSON object"),
])
def test_bad_workflow_files(tmp_path, doc, message):
    with pytest.raises(WorkflowError) as info:
        load_workflow(write(tmp_path, "bad.json", doc))
    assert message in str(info.value)


def test_broken_files_do_not_stop_the_others(tmp_path, caplog):
    good = {"name": "Good", "prompt": {"1": {"class_type": "PreviewImage", "inputs": {}}}}
    write(tmp_path, "good.json", good)
    write(tmp_path, "also-good_2.json", good)
    write(tmp_path, "ghost.json", {"prompt": {"1": {"class_type": "X", "inputs": {"a": "{{ghost}}"}}}})
    write(tmp_path, "truncated.json", '{"prompt": {')
    write(tmp_path, "bad name.json", good)
    write(tmp_path, "notes.txt", "not a workflow")
    with caplog.at_level(logging.WARNING, logger="monitor.workflows"):
        loaded = load_workflows(str(tmp_path))
    assert sorted(loaded) == ["also-good_2", "good"]
    logged = caplog.text
    assert "ghost.json" in logged and "not declared in parameters: ghost" in logged
    assert "truncated.json" in logged and "bad name.json" in logged


def test_missing_folder_gives_nothing(tmp_path):
    assert load_workflows(str(tmp_path / "absent")) == {}
    assert load_workflows(None) == {}


def _recorded_class_types() -> set[str]:
    types = set()
    for name in recordings.scenario_names():
        for exchange in recordings.posted_prompts(name):
            types |= {node["class_type"] for node in exchange["request"]["prompt"].values()}
    return types


def test_shipped_example_loads_and_renders():
    loaded = load_workflows(os.path.join(ROOT, "workflows"))
    assert "example_invert" in loaded
    wf = loaded["example_invert"]
    folder = new_job_folder(wf.id, "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc")
    r = wf.render({"width": "64", "height": 32, "color": "255", "upscale_method": "bilinear"}, folder)
    types = {node["class_type"] for node in r.prompt.values()}
    assert types <= (_recorded_class_types() & CORE_TYPES)
    assert "{{" not in json.dumps(r.prompt)
    empty = next(n for n in r.prompt.values() if n["class_type"] == "EmptyImage")["inputs"]
    assert empty == {"width": 64, "height": 32, "batch_size": 1, "color": 255}
    saves = [n for n in r.prompt.values() if "filename_prefix" in n["inputs"]]
    assert saves and all(n["inputs"]["filename_prefix"].startswith(folder + "/") for n in saves)
    assert all(n.get("_meta", {}).get("title") for n in r.prompt.values())
    # Same input names as the graphs ComfyUI 0.3.64 accepted in the recordings.
    recorded = {}
    for exchange in recordings.posted_prompts("01b_happy_path_feature_flags"):
        for node in exchange["request"]["prompt"].values():
            recorded[node["class_type"]] = set(node["inputs"])
    for node in r.prompt.values():
        assert set(node["inputs"]) == recorded[node["class_type"]]
