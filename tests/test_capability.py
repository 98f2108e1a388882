"""capability.lacks: a graph checked against a host's /object_info as ComfyUI validates it."""
from monitor.capability import combo_options, describe, lacks

OBJECT_INFO = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["sd15.safetensors", "flux.safetensors"]]}}},
    "ImageScale": {"input": {"required": {
        "image": ["IMAGE"], "width": ["INT", {"default": 512}],
        "upscale_method": ["COMBO", {"options": ["nearest-exact", "bilinear"]}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"]}, "optional": {"format": [["png", "webp"]]}}},
}
GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "6": {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "width": 64, "upscale_method": "bilinear"}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "format": "png"}},
}


def test_combo_options_in_both_formats():
    assert combo_options([["a", "b"], {}]) == ["a", "b"]
    assert combo_options(["COMBO", {"options": ["x"]}]) == ["x"]
    assert combo_options(["INT", {"default": 1}]) is None and combo_options(None) is None


def test_missing_model_and_node_type_are_named_with_the_node():
    assert lacks(GRAPH, OBJECT_INFO) == ['no ckpt_name \'sdxl.safetensors\' for node "Load Checkpoint" (#4)']
    graph = dict(GRAPH, **{"9": {"class_type": "UltimateUpscale", "inputs": {}}})
    graph["4"] = dict(graph["4"], inputs={"ckpt_name": "flux.safetensors"})
    assert lacks(graph, OBJECT_INFO) == ["no node type 'UltimateUpscale' for node \"UltimateUpscale\" (#9)"]
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "format": "tiff"}}
    assert lacks(graph, OBJECT_INFO)[0] == "no format 'tiff' for node \"SaveImage\" (#7)"


def test_a_graph_the_host_has_everything_for():
    graph = dict(GRAPH)
    graph["4"] = dict(graph["4"], inputs={"ckpt_name": "sd15.safetensors"})
    assert lacks(graph, OBJECT_INFO) == []


def test_describe_caps_the_list():
    assert describe(["a", "b"]) == "a; b"
    assert describe(["a", "b", "c", "d", "e"]) == "a; b; c (and 2 more)"
