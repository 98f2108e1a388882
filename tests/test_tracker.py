"""Tracker driven by every recorded ComfyUI 0.3.64 scenario; expectations are derived from the recordings."""
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from monitor import graph as graphs
from monitor.graph import DEFAULT_INSTANT_TYPES
from monitor.protocol import parse_binary, parse_text
from monitor.tracker import Tracker
from recordings import frames, http, load, posted_prompts, scenario_names

TERMINAL_MESSAGES = {"execution_success": "completed", "execution_error": "failed",
                     "execution_interrupted": "interrupted"}
KINDS = {"started", "cached", "node_output", "completed", "failed", "interrupted", "hint_finished"}


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


@dataclass
class Replay:
    name: str
    tracker: Tracker
    clock: Clock
    graphs: dict
    messages: list = field(default_factory=list)      # (type, data, state of its prompt afterwards)
    transitions: list = field(default_factory=list)
    states: dict = field(default_factory=dict)        # prompt id -> every state it had
    previews: list = field(default_factory=list)      # (Preview, BinaryFrame, last progress data)
    reconnected_at: list = field(default_factory=list)
    epochs: list = field(default_factory=list)        # per message: reconnects seen before it

    def final(self, pid):
        return self.tracker.state(pid)

    def kinds(self, pid):
        return [t.kind for t in self.transitions if t.prompt_id == pid]

    def prompt_ids(self):
        return {d["prompt_id"] for _, d, _ in self.messages if isinstance(d.get("prompt_id"), str)}


def outputs_to_execute(name):
    """Each prompt's outputs to execute, as GET /queue and GET /history report them."""
    found = {}
    for line in http(name, "GET", "/queue") + http(name, "GET", "/history"):
        answer = line.get("response") or {}
        entries = answer.get("queue_running", []) + answer.get("queue_pending", []) if "queue_running" in answer \
            else [e["prompt"] for e in answer.values() if isinstance(e, dict) and "prompt" in e]
        for entry in entries:
            found[entry[1]] = entry[4]
    return found


def replay(name, conn, register=True, instant=()):
    clock = Clock()
    r = Replay(name, Tracker(set(instant), clock=clock), clock, {})
    outputs = outputs_to_execute(name)
    for post in posted_prompts(name):
        pid, graph = post["response"]["prompt_id"], post["request"]["prompt"]
        r.graphs[pid] = graph
        if register:
            r.tracker.register(pid, graph, outputs.get(pid), number=post["response"]["number"],
                               client_id=post["request"].get("client_id"))
    reopens = [line["t"] for line in load(name) if line["kind"] == "ws_open" and line["conn"] == conn][1:]
    last_progress = None
    for frame in frames(name, conn):
        while reopens and frame.t >= reopens[0]:
            r.tracker.on_reconnect()
            r.reconnected_at.append(reopens.pop(0))
        clock.now = frame.t
        if frame.text is not None:
            msg_type, data = parse_text(frame.text)
            r.transitions += r.tracker.handle(msg_type, data)
            pid = data.get("prompt_id") or r.tracker.running_id()
            r.messages.append((msg_type, data, r.tracker.state(pid) if pid else None))
            r.epochs.append(len(r.reconnected_at))
            if msg_type == "progress":
                last_progress = data
        else:
            parsed = parse_binary(frame.binary)
            if parsed.event in (1, 4):
                r.previews.append((r.tracker.handle_preview(parsed), parsed, last_progress))
        for pid in r.tracker.pop_dirty():
            r.states.setdefault(pid, []).append(r.tracker.state(pid))
    return r


def execution_conns():
    """Every (scenario, socket) that received execution messages."""
    out = []
    for name in scenario_names():
        conns = {line["conn"] for line in load(name) if line["kind"] == "ws_text"
                 and line["msg"]["type"] in ("execution_start", "progress", "progress_state")}
        out += [(name, conn) for conn in sorted(conns)]
    return out


CONNS = execution_conns()
CONN_IDS = [f"{n}-{c}" for n, c in CONNS]


def test_the_recordings_cover_submitters_and_observers():
    assert ("00_connect_handshake", "legacy_dup_same_clientid") in CONNS
    assert ("07b_observer_no_client_id", "observer") in CONNS
    assert len({n for n, _ in CONNS}) >= 13


def expected_status(r, pid):
    for msg_type, data, _ in r.messages:
        if msg_type in TERMINAL_MESSAGES and data.get("prompt_id") == pid:
            return TERMINAL_MESSAGES[msg_type]
    return "running" if pid in r.prompt_ids() else "queued"


@pytest.mark.parametrize("register", [True, False], ids=["registered", "unregistered"])
@pytest.mark.parametrize("name,conn", CONNS, ids=CONN_IDS)
def test_replay_invariants(name, conn, register):
    r = replay(name, conn, register=register)
    for t in r.transitions:
        assert t.kind in KINDS
    for pid, states in r.states.items():
        percents = [s["percent"] for s in states if s["percent"] is not None]
        assert percents == sorted(percents), f"{pid} percent went backwards"
        assert all(0 <= p <= 100 for p in percents)
        for s in states:
            assert (s["percent"] == 100) == (s["status"] == "completed")
            assert s["indeterminate"] == (s["status"] == "running" and s["percent"] is None)
            if s["nodes_total"] is not None:
                assert 0 <= s["nodes_done"] <= s["nodes_total"]
        status = expected_status(r, pid)
        assert r.final(pid)["status"] == status
        terminal = [k for k in r.kinds(pid) if k in TERMINAL_MESSAGES.values()]
        assert terminal == ([status] if status in TERMINAL_MESSAGES.values() else [])
        if status in ("running", "completed", "failed", "interrupted"):
            assert r.kinds(pid).count("started") == 1 and r.final(pid)["started_at"]


@pytest.mark.parametrize("name,conn", CONNS, ids=CONN_IDS)
def test_completed_prompts_count_the_nodes_that_ran(name, conn):
    r = replay(name, conn)
    for pid in r.prompt_ids():
        final = r.final(pid)
        if final["status"] != "completed" or not any(m == "execution_start" for m, _, _ in r.messages):
            continue
        graph = r.graphs[pid]
        ran = {d["node"] for m, d, _ in r.messages if m == "executing" and d.get("prompt_id") == pid and d["node"]}
        expected = {n for n in ran if graph[n]["class_type"] not in DEFAULT_INSTANT_TYPES}
        cached = next(d["nodes"] for m, d, _ in r.messages if m == "execution_cached" and d["prompt_id"] == pid)
        assert final["percent"] == 100
        assert final["nodes_done"] == final["nodes_total"] == len(expected)
        assert final["cached_nodes"] == cached
        executed = [d["node"] for m, d, _ in r.messages if m == "executed" and d["prompt_id"] == pid and d["output"]]
        assert [o["node_id"] for o in final["outputs"]] == executed
        for o in final["outputs"]:
            node = graph[o["node_id"]]
            assert o["title"] == node.get("_meta", {}).get("title", node["class_type"])
        started = [s for s in r.states[pid] if s["status"] == "running"]
        assert all(s["percent"] is None or s["percent"] < 100 for s in started)


@pytest.mark.parametrize("name", ["01_happy_path_legacy", "01b_happy_path_feature_flags",
                                  "02_fully_cached", "03_partially_cached"])
def test_happy_paths_complete_at_100(name):
    r = replay(name, "submitter")
    (pid,) = r.graphs
    assert r.final(pid)["status"] == "completed" and r.final(pid)["percent"] == 100
    assert r.kinds(pid)[0] == "started" and r.kinds(pid)[-1] == "completed"
    assert r.tracker.running_id() is None and r.tracker.active() == []


def test_fully_cached_prompt_is_indeterminate_until_success():
    r = replay("02_fully_cached", "submitter")
    (pid,) = r.graphs
    assert r.final(pid)["cached_nodes"] == list(r.graphs[pid])
    assert r.final(pid)["nodes_total"] == 0
    running = [s for s in r.states[pid] if s["status"] == "running"]
    assert running and all(s["percent"] is None and s["indeterminate"] for s in running)
    assert "cached" in r.kinds(pid)


def test_partially_cached_prompt_counts_only_nodes_to_run():
    r = replay("03_partially_cached", "submitter")
    (pid,) = r.graphs
    graph, cached = r.graphs[pid], r.final(pid)["cached_nodes"]
    to_run = {n for n, node in graph.items() if n not in cached and node["class_type"] not in DEFAULT_INSTANT_TYPES}
    assert r.final(pid)["nodes_total"] == len(to_run) > 0
    percents = [s["percent"] for s in r.states[pid] if s["percent"] is not None]
    assert 0 < percents[-2] < 100 and percents[-1] == 100


def test_error_keeps_node_title_and_message():
    r = replay("04_error_mid_run", "submitter")
    (pid,) = r.graphs
    err = next(d for m, d, _ in r.messages if m == "execution_error")
    last_ps = [d for m, d, _ in r.messages if m == "progress_state"][-1]
    assert last_ps["nodes"][err["node_id"]]["state"] == "running"  # the trap: progress_state never says failed
    final = r.final(pid)
    assert final["status"] == "failed" and final["percent"] < 100
    (failed,) = [t for t in r.transitions if t.kind == "failed"]
    error = failed.data["error"]
    assert error["node_id"] == err["node_id"] and error["node_type"] == err["node_type"]
    assert error["node_title"] == r.graphs[pid][err["node_id"]]["_meta"]["title"]
    assert error["message"] == err["exception_message"].rstrip("\n") and not error["message"].endswith("\n")
    assert error["exception_type"] == err["exception_type"]
    assert error["traceback"].startswith(err["traceback"][0][:20])
    assert "completed" not in r.kinds(pid)


def test_interrupt_then_the_next_prompt_completes():
    r = replay("05_interrupt", "submitter")
    first, second = r.graphs
    assert r.final(first)["status"] == "interrupted" and r.final(first)["percent"] < 100
    assert "completed" not in r.kinds(first)
    (interrupted,) = [t for t in r.transitions if t.kind == "interrupted"]
    assert interrupted.data["node_title"] == r.graphs[first]["3"]["_meta"]["title"]
    assert r.final(second)["status"] == "completed" and r.final(second)["percent"] == 100


def _deleted(name):
    return [pid for line in http(name, "POST", "/queue") for pid in (line["request"] or {}).get("delete", [])]


def test_deleted_prompt_never_starts():
    r = replay("06_queue_three_delete_one", "submitter")
    (deleted,) = _deleted(r.name)
    assert r.final(deleted)["status"] == "queued" and r.final(deleted)["started_at"] is None
    assert r.kinds(deleted) == []
    for pid in set(r.graphs) - {deleted}:
        assert r.final(pid)["status"] == "completed"
    assert [t.kind for t in r.tracker.finish(deleted, "cancelled")] == ["cancelled"]
    assert r.final(deleted)["status"] == "cancelled" and r.tracker.active() == []


def test_cancel_all():
    r = replay("06b_cancel_all", "submitter")
    running, *cleared = r.graphs
    assert r.final(running)["status"] == "interrupted"
    assert [s["prompt_id"] for s in r.tracker.active()] == cleared  # still queued, by number
    for pid in cleared:
        assert r.tracker.finish(pid, "cancelled")[0].kind == "cancelled"
    assert r.tracker.active() == []


@pytest.mark.parametrize("register", [True, False])
@pytest.mark.parametrize("conn", ["observer", "observer_ff"])
def test_prompts_without_client_id_seen_by_an_observer(conn, register):
    r = replay("07b_observer_no_client_id", conn, register=register)
    first, second = r.graphs
    # The first one ends without any terminal message: it stays running until the reconciler settles it.
    assert r.final(first)["status"] == "running"
    assert any(t.kind == "hint_finished" and t.data["reason"] == "superseded"
               for t in r.transitions if t.prompt_id == first)
    assert r.final(second)["status"] == "interrupted"
    assert [s["prompt_id"] for s in r.tracker.active()] == [first]
    (done,) = r.tracker.finish(first, "completed")
    assert done.kind == "completed" and r.final(first)["percent"] == 100
    assert r.tracker.finish(first, "failed") == []  # settled once
    if not register:  # no graph: percent follows the steps only
        assert r.final(second)["nodes_total"] is None


@pytest.mark.parametrize("name", ["08_server_restart_mid_run", "08b_server_killed_mid_run"])
def test_server_restart_leaves_prompts_open_until_finished(name):
    r = replay(name, "submitter")
    running, pending = r.graphs
    assert r.reconnected_at
    before = r.final(running)
    assert before["status"] == "running" and 0 < before["percent"] < 100
    assert r.final(pending)["status"] == "queued"
    assert [s["prompt_id"] for s in r.tracker.active()] == [running, pending]
    (stalled,) = r.tracker.finish(running, "stalled")
    assert stalled.kind == "stalled" and r.final(running)["percent"] == before["percent"]
    assert r.tracker.running_id() is None


def test_reconnect_mid_run_continues_progress():
    r = replay("09_submitter_reconnect_mid_run", "submitter")
    (pid,) = r.graphs
    assert len(r.reconnected_at) == 1
    progress = [(d, s, e) for (m, d, s), e in zip(r.messages, r.epochs) if m == "progress"]
    before = [(d, s) for d, s, e in progress if e == 0]
    after = [(d, s) for d, s, e in progress if e == 1]
    assert before and after
    assert after[0][0]["value"] > before[-1][0]["value"] + 1  # steps sent meanwhile are lost
    assert after[0][1]["it_per_s"] is None  # timing restarts after the gap
    assert after[1][1]["it_per_s"] is not None
    assert after[0][1]["percent"] > before[-1][1]["percent"]
    assert r.final(pid)["status"] == "completed" and r.final(pid)["percent"] == 100


@pytest.mark.parametrize("name,conn", CONNS, ids=CONN_IDS)
def test_step_rate_and_eta_during_the_sampler(name, conn):
    r = replay(name, conn)
    runs = {}
    for (msg_type, data, state), epoch in zip(r.messages, r.epochs):
        if msg_type != "progress":
            continue
        assert state["step"] == {"value": data["value"], "max": data["max"]}
        assert state["node_id"] == data["node"]
        run = runs.setdefault((data["prompt_id"], data["node"], epoch), [])
        run.append(state)
        delay_s = r.graphs[data["prompt_id"]][data["node"]]["inputs"]["delay_ms"] / 1000
        if len(run) == 1:
            assert state["it_per_s"] is None and state["eta_s"] is None
        else:
            rate = state["it_per_s"]
            assert 0.5 / delay_s < rate < 1.2 / delay_s
            assert state["eta_s"] == pytest.approx((data["max"] - data["value"]) / rate, abs=0.06)
    assert runs or name.startswith(("00", "02", "03", "10"))


@pytest.mark.parametrize("name,conn", CONNS, ids=CONN_IDS)
def test_previews_are_attributed(name, conn):
    r = replay(name, conn)
    for preview, frame, last_progress in r.previews:
        assert preview is not None and preview.image is frame.image and preview.mime == frame.mime
        if frame.event == 4:
            assert (preview.prompt_id, preview.node_id) == (frame.prompt_id, frame.node_id)
        else:  # type 1 carries no ids: the running prompt and the node of the last progress
            assert (preview.prompt_id, preview.node_id) == (last_progress["prompt_id"], last_progress["node"])


def test_type4_previews_come_before_their_progress_and_still_match():
    r = replay("01b_happy_path_feature_flags", "submitter")
    (pid,) = r.graphs
    assert len(r.previews) == 10 and {p.prompt_id for p, _, _ in r.previews} == {pid}


def test_pop_dirty_reports_each_change_once():
    tracker = Tracker(set())
    post = posted_prompts("01_happy_path_legacy")[0]
    pid = post["response"]["prompt_id"]
    tracker.register(pid, post["request"]["prompt"])
    assert tracker.pop_dirty() == {pid} and tracker.pop_dirty() == set()
    tracker.handle("execution_start", {"prompt_id": pid})
    assert tracker.pop_dirty() == {pid}
    tracker.handle("status", {"status": {}})
    assert tracker.pop_dirty() == set()


def test_active_orders_running_first_then_queue_numbers():
    line = next(l for l in http("06_queue_three_delete_one", "GET", "/queue") if l["response"]["queue_pending"])
    running, pending = line["response"]["queue_running"], line["response"]["queue_pending"]
    tracker = Tracker(set())
    for number, pid, graph, extra, outputs in reversed(pending):
        tracker.register(pid, graph, outputs, number=number, client_id=extra["client_id"])
    for number, pid, graph, extra, outputs in running:
        tracker.register(pid, graph, outputs, number=number, status="running")
    order = [s["prompt_id"] for s in tracker.active()]
    assert order == [e[1] for e in running] + [e[1] for e in sorted(pending)]
    assert tracker.running_id() == running[0][1]
    tracker.register(running[0][1], None, status="queued")  # never backwards
    assert tracker.state(running[0][1])["status"] == "running"


def test_forget_drops_the_prompt_and_ignores_late_frames():
    r = replay("01_happy_path_legacy", "submitter")
    (pid,) = r.graphs
    r.tracker.forget(pid)
    assert r.tracker.state(pid) is None and r.tracker.pop_dirty() == set()
    late = [parse_text(f.text) for f in frames(r.name, "submitter") if f.text and pid in f.text]
    for msg_type, data in late:
        r.tracker.handle(msg_type, data)
    preview = parse_binary(next(f.binary for f in frames(r.name, "submitter") if f.binary and f.binary[3] == 1))
    assert r.tracker.handle_preview(preview) is None or r.tracker.handle_preview(preview).prompt_id is None
    assert r.tracker.state(pid) is None and r.tracker.active() == [] and r.tracker.pop_dirty() == set()


def test_executing_null_alone_is_only_a_hint():
    r = replay("01_happy_path_legacy", "submitter")
    (pid,) = r.graphs
    tracker = Tracker(set())
    tracker.register(pid, r.graphs[pid])
    tracker.handle("execution_start", {"prompt_id": pid})
    (hint,) = tracker.handle("executing", {"node": None, "prompt_id": pid})
    assert (hint.kind, hint.data["reason"]) == ("hint_finished", "executing_null")
    assert tracker.state(pid)["status"] == "running"
    assert tracker.handle("executing", {"node": None}) == []


def test_extra_instant_types_leave_the_count():
    name = "01_happy_path_legacy"
    base, more = replay(name, "submitter"), replay(name, "submitter", instant={"ImageScale"})
    (pid,) = base.graphs
    scales = sum(1 for n in base.graphs[pid].values() if n["class_type"] == "ImageScale")
    assert more.final(pid)["nodes_total"] == base.final(pid)["nodes_total"] - scales


def test_elapsed_follows_the_injected_clock():
    r = replay("01_happy_path_legacy", "submitter")
    (pid,) = r.graphs
    start = next(f.t for f in frames(r.name, "submitter") if f.text and "execution_start" in f.text)
    end = next(f.t for f in frames(r.name, "submitter") if f.text and "execution_success" in f.text)
    assert r.final(pid)["elapsed_s"] == pytest.approx(end - start, abs=0.1)


IDS = st.sampled_from(["p1", "p2", "3", ""]) | st.text(max_size=3) | st.none() | st.integers()
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | IDS,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(IDS.filter(lambda k: isinstance(k, str)),
                                                                                inner, max_size=3),
                    max_leaves=10)
KEYS = st.sampled_from(["prompt_id", "node", "display_node", "nodes", "value", "max", "output", "state",
                        "node_id", "node_type", "exception_message", "exception_type", "traceback"])
TYPES = st.sampled_from(["execution_start", "execution_cached", "executing", "progress", "progress_state",
                         "executed", "execution_success", "execution_error", "execution_interrupted", "status", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TYPES, st.dictionaries(KEYS, JSON, max_size=6)), max_size=12), st.booleans())
def test_fuzz_handle_never_raises(messages, with_graph):
    tracker = Tracker(set(), clock=Clock())
    if with_graph:
        tracker.register("p1", posted_prompts("01_happy_path_legacy")[0]["request"]["prompt"])
    for msg_type, data in messages:
        for t in tracker.handle(msg_type, data):
            assert t.kind in KINDS | {"blocked"}
    for state in tracker.active() + [tracker.state(p) for p in tracker.pop_dirty()]:
        assert state is None or state["percent"] is None or 0 <= state["percent"] <= 100


# --- graph helpers the tracker relies on ------------------------------------------------------

POSTS = [(name, post) for name in scenario_names() for post in posted_prompts(name)]


@pytest.mark.parametrize("name,post", POSTS, ids=[f"{n}-{p['seq']}" for n, p in POSTS])
def test_graph_helpers_on_recorded_prompts(name, post):
    graph, extra = post["request"]["prompt"], post["request"].get("extra_data", {})
    workflow = extra.get("extra_pnginfo", {}).get("workflow", {})
    assert graphs.workflow_name(graph, extra) == workflow.get("name")
    assert graphs.prompt_excerpt(graph) is None  # the recorded workflows have no text prompt
    assert graphs.seeds(graph) == [n["inputs"]["seed"] for n in graph.values() if "seed" in n["inputs"]]
    for nid, node in graph.items():
        assert graphs.node_title(graph, nid) == node.get("_meta", {}).get("title", node["class_type"])
    outputs = outputs_to_execute(name).get(post["response"]["prompt_id"])
    if outputs is None:
        return
    effective = graphs.effective_nodes(graph, outputs)
    assert set(outputs) <= effective <= set(graph)
    invalid = {o for e in post["response"]["node_errors"].values() for o in e["dependent_outputs"]}
    assert not invalid & effective
    if not invalid:
        assert sorted(graphs.output_nodes_guess(graph)) == sorted(outputs)
        assert graphs.effective_nodes(graph, None) == effective


def test_prompt_excerpt_prefers_the_positive_prompt():
    graph = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, ugly", "clip": ["9", 1]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a  red\nfox " * 40, "clip": ["9", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"positive": ["2", 0], "negative": ["1", 0], "seed": 7}},
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    }
    excerpt = graphs.prompt_excerpt(graph, limit=30)
    assert excerpt.startswith("a red fox a red fox") and excerpt.endswith("…") and len(excerpt) <= 30
    assert graphs.seeds(graph) == [7]
    assert graphs.output_nodes_guess(graph) == ["3"]
    assert graphs.effective_nodes(graph, ["3"]) == {"1", "2", "3", "9"}
    assert graphs.workflow_name(graph, {}) is None and graphs.workflow_name(None, None) is None
    assert graphs.node_title(None, "5") == "5"
