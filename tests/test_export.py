"""JSON round trips, the networkx graph of a schedule, and DOT export."""

from __future__ import annotations

import dataclasses
import json

import networkx as nx
import pytest

import vlrnn_planner as vp
from vlrnn_planner import strategies
from vlrnn_planner.plan import Document, load_document
from vlrnn_planner.actions import Advance
from vlrnn_planner.errors import InvalidInputError


PARTS = (
    ("parameters", 1000),
    ("gradients", 1000),
    ("inputs", 500),
    ("targets", 0),
    ("input gradients", 0),
    ("stored states", 99 * 200),
    ("working state and its gradient", 2 * 200),
    ("block in flight", 300_000),
)


def full_prediction(**overrides) -> vp.Prediction:
    """A prediction with every field away from its default."""
    fields = dict(
        peak_bytes=2500 + 101 * 200 + 300_000,
        seconds=1.25,
        memory_parts=PARTS,
        state_bytes=200.0,
        block_bytes=300_000,
        fixed_bytes=2500,
        baseline_seconds=0.5,
        device="cuda:0",
        budget_bytes=8 * 10**9,
    )
    fields.update(overrides)
    return vp.Prediction(**fields)


def full_schedule(**overrides) -> vp.Schedule:
    """A schedule with every field away from its default."""
    fields = dict(
        strategy="blocks",
        seq_len=1003,
        block_length=10,
        checkpoints=7,
        levels=(10, 3),
        batch_size=64,
        prediction=full_prediction(),
    )
    fields.update(overrides)
    return vp.Schedule(**fields)


def schedules() -> list[vp.Schedule]:
    cases = [
        vp.fixed_plan(block_length=5).schedule(seq_len=1),
        vp.fixed_plan(block_length=100).schedule(seq_len=100),
        vp.fixed_plan(block_length=1).schedule(seq_len=2),
        vp.fixed_plan(block_length=7).schedule(seq_len=50, batch_size=3),
        full_schedule(),
    ]
    if "multilevel" in strategies.STRATEGIES:
        cases += [
            vp.Schedule("multilevel", seq_len=200, block_length=4, levels=(10, 3)),
            full_schedule(strategy="multilevel", seq_len=97, block_length=2, levels=(7,)),
        ]
    if "binomial" in strategies.STRATEGIES:
        cases += [
            vp.fixed_plan(block_length=1, checkpoints=3).schedule(seq_len=20),
            vp.fixed_plan(block_length=2, checkpoints=1).schedule(seq_len=9),
        ]
    return cases


# -- JSON ------------------------------------------------------------------------------------


def test_schedule_round_trip_every_field():
    s = full_schedule()
    text = s.to_json()
    doc = json.loads(text)
    assert doc["format"] == "vlrnn-planner/schedule"
    assert doc["version"] == 1
    back = vp.Schedule.from_json(text)
    assert back == s
    assert isinstance(back.levels, tuple)
    assert isinstance(back.memory_parts, tuple)
    assert all(isinstance(p, tuple) for p in back.memory_parts)
    assert back.memory_parts == s.memory_parts
    # every exported field is in the file
    assert set(doc["schedule"]) == {f.name for f in dataclasses.fields(vp.Schedule) if not f.name.startswith("_")}


@pytest.mark.parametrize("schedule", schedules(), ids=repr)
def test_schedule_round_trip(schedule):
    assert vp.Schedule.from_json(schedule.to_json(indent=2)) == schedule


def test_schedule_round_trip_with_boundaries():
    s = full_schedule(strategy="binomial", seq_len=100, block_length=1, checkpoints=3, levels=(), boundaries=(0, 5, 12, 30, 61, 100))
    text = s.to_json()
    assert json.loads(text)["schedule"]["boundaries"] == [0, 5, 12, 30, 61, 100]
    back = vp.Schedule.from_json(text)
    assert back == s and isinstance(back.boundaries, tuple) and back.block_length == 39
    assert list(back.actions) == list(s.actions)
    assert nx.is_isomorphic(back.graph(), s.graph())


def test_plan_round_trip_without_profile():
    for plan in (
        vp.fixed_plan(block_length=50),
        vp.fixed_plan(block_length=50, checkpoints=8),
        vp.Plan(budget_bytes=8 * 10**9, strategy="blocks"),
        vp.Plan(),
    ):
        text = plan.to_json()
        assert json.loads(text)["format"] == "vlrnn-planner/plan"
        back = vp.Plan.from_json(text)
        assert back == plan
        assert back.profile is None


def test_plan_cache_is_not_exported():
    plan = vp.fixed_plan(block_length=10)
    plan.schedule(seq_len=100, batch_size=2)
    assert plan._cache
    doc = json.loads(plan.to_json())
    assert "_cache" not in doc["plan"]
    assert vp.Plan.from_json(plan.to_json())._cache == {}


def test_plan_round_trip_with_cell_profile():
    wanted = dict(
        device="cuda:0",
        device_name="NVIDIA H200",
        cell="LSTM(64, 1024, num_layers=4)",
        parameter_bytes=34_000_000,
        state_bytes_per_sample=32768.0,
        activation_bytes_per_step=1.5e5,
        fb_seconds_per_step=2.5e-5,
        device_total_bytes=150_000_000_000,
        loss_included=True,
        notes=("measured with NVML", "context included"),
    )
    profile = vp.CellProfile(**wanted)
    plan = vp.Plan(budget_bytes=8 * 10**9, profile=profile, time_dim=1, block_multiple=4)
    text = plan.to_json()
    back = vp.Plan.from_json(text)
    assert back == plan and (back.time_dim, back.block_multiple) == (1, 4)
    assert type(back.profile) is vp.CellProfile
    assert isinstance(back.profile.notes, tuple)
    assert json.loads(text)["plan"]["profile"] == {**profile.to_dict(), "notes": list(profile.notes)}
    # Files written when the profile was tagged with its type still load.
    doc = json.loads(text)
    doc["plan"]["profile"]["__type__"] = "CellProfile"
    assert vp.Plan.from_json(json.dumps(doc)) == plan


def test_plan_file_with_schedule_primes_cache():
    plan = vp.fixed_plan(block_length=10)
    schedule = full_schedule(strategy="blocks", seq_len=95, block_length=10, batch_size=4)
    text = plan.to_json(schedule=schedule, indent=2)
    doc = load_document(text)
    assert doc.plan == plan and doc.schedule == schedule
    assert doc.plan.schedule(seq_len=95, batch_size=4) is doc.schedule
    assert vp.Plan.from_json(text) == plan
    assert load_document(schedule.to_json()) == Document(schedule=schedule)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"format": "something/else", "version": 1}', '"format": "vlrnn-planner/schedule"'),
        ("[1, 2]", "vlrnn-planner/schedule"),
        ("not json", "invalid JSON"),
        ('{"format": "vlrnn-planner/schedule", "version": 99, "schedule": {}}', "version 99"),
        (vp.fixed_plan(block_length=3).to_json(), "Plan.from_json"),
        (
            '{"format": "vlrnn-planner/schedule", "version": 1, "schedule": '
            '{"strategy": "blocks", "seq_len": 10, "block_length": 2, "colour": "red"}}',
            "colour",
        ),
        ('{"format": "vlrnn-planner/schedule", "version": 1, "schedule": {"strategy": "blocks"}}', "seq_len"),
        (
            '{"format": "vlrnn-planner/schedule", "version": 1, "schedule": '
            '{"strategy": "blocks", "seq_len": 10, "block_length": 2, "levels": 3}}',
            "levels",
        ),
    ],
)
def test_schedule_wrong_document_rejected(text, fragment):
    with pytest.raises(InvalidInputError, match="^vlrnn_planner: ") as info:
        vp.Schedule.from_json(text)
    assert fragment in str(info.value)


def test_plan_wrong_format_rejected():
    with pytest.raises(InvalidInputError, match='expected a document with "format": "vlrnn-planner/plan"'):
        vp.Plan.from_json(full_schedule().to_json())
    with pytest.raises(InvalidInputError, match="unknown object type"):
        vp.Plan.from_json(
            '{"format": "vlrnn-planner/plan", "version": 1, "plan": {"profile": {"__type__": "os.system"}}}'
        )


def test_unexportable_value_rejected():
    with pytest.raises(InvalidInputError, match="cannot export Plan.profile"):
        vp.Plan(profile=object()).to_json()


# -- graph -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", schedules(), ids=repr)
def test_graph_structure(schedule):
    actions = list(schedule.actions)
    g = schedule.graph()
    assert isinstance(g, nx.DiGraph)
    assert g.number_of_nodes() == len(actions)
    assert nx.is_directed_acyclic_graph(g)
    for i, action in enumerate(actions):
        data = g.nodes[i]
        assert data["index"] == i
        assert data["kind"] == type(action).__name__
        assert data["label"] == repr(action)
        for value in data.values():
            assert isinstance(value, (bool, int, float, str, tuple))
    # the order chain visits every action once, in order
    chain = [(u, v) for u, v, d in g.edges(data=True) if d["order"]]
    assert sorted(chain) == [(i, i + 1) for i in range(len(actions) - 1)]
    # every reads edge comes from the Advance that stored or produced the state
    for u, v, d in g.edges(data=True):
        if d["kind"] != "reads":
            assert d["kind"] == "order"
            continue
        producer, reader = actions[u], actions[v]
        assert isinstance(producer, Advance)
        assert d["boundary"] in producer.save or d["boundary"] == producer.stop
        read = reader.start if isinstance(reader, Advance) else reader.block
        assert d["boundary"] == read
        assert u < v


def test_graph_reads_edges_blocks():
    g = vp.fixed_plan(block_length=10).schedule(seq_len=40).graph()
    # Advance(0, 3, save=(1, 2)), FB(3), FB(2), Free(2), FB(1), Free(1), FB(0), Free(0)
    reads = sorted((u, v, d["boundary"]) for u, v, d in g.edges(data=True) if d["kind"] == "reads")
    assert reads == [(0, 1, 3), (0, 2, 2), (0, 4, 1)]
    assert [g.nodes[i]["stored_states"] for i in range(8)] == [3, 3, 3, 2, 2, 1, 1, 0]
    assert "memory_bytes" not in g.nodes[0]
    assert g.graph["seq_len"] == 40


def test_graph_memory_from_predictions():
    parts = (
        ("parameters", 1000),
        ("stored states", 3 * 10),
        ("working state and its gradient", 2 * 10),
        ("block in flight", 100),
    )
    prediction = vp.Prediction(peak_bytes=1150, seconds=1.0, memory_parts=parts, state_bytes=10,
                               block_bytes=100, fixed_bytes=1000)
    s = vp.Schedule("blocks", seq_len=40, block_length=10, prediction=prediction)
    g = s.graph()
    peaks = [g.nodes[i]["peak_bytes"] for i in g.nodes]
    after = [g.nodes[i]["memory_bytes"] for i in g.nodes]
    # Advance(0, 3, save=(1, 2)), FB(3), FB(2), Free(2), FB(1), Free(1), FB(0), Free(0)
    assert max(peaks) == s.predicted_peak_bytes  # the cost model's peak, reached by FB(3)
    assert peaks[1] == 1150
    assert after[-1] == 1000  # only the parameters are left
    assert all(p >= a for p, a in zip(peaks, after))
    assert "peak 1.15 KB" in s.to_dot()
    assert g.graph["prediction_peak_bytes"] == 1150 and g.graph["prediction_memory_parts"] == parts
    # without a prediction there is no memory, only the stored states
    plain = dataclasses.replace(s, prediction=None)
    assert "memory_bytes" not in plain.graph().nodes[0]


@pytest.mark.parametrize("schedule", schedules(), ids=repr)
def test_graph_isomorphic_after_round_trip(schedule):
    g = schedule.graph()
    h = vp.Schedule.from_json(schedule.to_json()).graph()
    assert nx.is_isomorphic(g, h, node_match=dict.__eq__, edge_match=dict.__eq__)
    assert g.graph == h.graph


# -- DOT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", schedules(), ids=repr)
def test_dot_has_every_node_and_edge(schedule):
    dot = schedule.to_dot()
    g = schedule.graph()
    assert dot.startswith("digraph schedule {") and dot.rstrip().endswith("}")
    for node in g.nodes:
        assert f"\n  a{node} [label=" in dot
    for u, v in g.edges:
        assert f"\n  a{u} -> a{v} [" in dot
    assert dot.count(" -> ") == g.number_of_edges()
    assert dot.count("{") == dot.count("}")


def test_schedule_round_trip_with_splits():
    from vlrnn_planner.strategies import chain_splits

    bounds = (0, 2, 5, 9, 14, 20, 27, 35, 50)
    _, splits = chain_splits([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 2)
    s = full_schedule(strategy="binomial", seq_len=50, block_length=1, checkpoints=2, levels=(), boundaries=bounds, splits=splits)
    text = s.to_json()
    assert json.loads(text)["schedule"]["splits"] == list(splits)
    back = vp.Schedule.from_json(text)
    assert back == s and isinstance(back.splits, tuple)
    assert list(back.actions) == list(s.actions)
    assert nx.is_isomorphic(back.graph(), s.graph())


# -- every field checked on load ---------------------------------------------------------------


def _with(text: str, path: tuple, value) -> str:
    doc = json.loads(text)
    where = doc
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        (("schedule", "prediction", "peak_bytes"), "x", "schedule.prediction.peak_bytes must be an int >= 0, got 'x'"),
        (("schedule", "prediction", "seconds"), -1.0, "schedule.prediction.seconds must be a finite number >= 0"),
        (("schedule", "prediction", "budget_bytes"), "8GB", "schedule.prediction.budget_bytes must be an int >= 1"),
        (("schedule", "prediction", "memory_parts"), [["inputs", 1.5]], "schedule.prediction.memory_parts[0][1]"),
        (("schedule", "prediction", "memory_parts"), [["inputs", 1]], "add up to 1 bytes, not the peak"),
        (("schedule", "prediction", "colour"), 1, "schedule.prediction has fields this version does not know: colour"),
        (("schedule", "batch_size"), -1, "schedule.batch_size must be an int >= 1, got -1"),
        (("schedule", "seq_len"), "1003", "schedule.seq_len must be an int >= 1, got '1003'"),
        (("schedule", "checkpoints"), 0, "schedule.checkpoints must be an int >= 1, got 0"),
        (("schedule", "strategy"), 3, "schedule.strategy must be a string"),
        (("schedule", "boundaries"), [0, "5", 1003], "schedule.boundaries[1] must be an int"),
        (("schedule", "prediction"), [], "schedule.prediction must be a JSON object"),
        (("schedule", "predicted_peak_bytes"), 5, "keeps in schedule.prediction"),
    ],
)
def test_schedule_fields_checked_on_load(path, value, fragment):
    with pytest.raises(InvalidInputError, match="^vlrnn_planner: ") as info:
        vp.Schedule.from_json(_with(full_schedule().to_json(), path, value))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        (("plan", "budget_bytes"), "8GB", "plan.budget_bytes must be an int >= 1, got '8GB'"),
        (("plan", "budget_bytes"), 0, "plan.budget_bytes must be an int >= 1, got 0"),
        (("plan", "block_length"), 2.5, "plan.block_length must be an int >= 1, got 2.5"),
        (("plan", "block_multiple"), 0, "plan.block_multiple must be an int >= 1"),
        (("plan", "time_dim"), "0", "plan.time_dim must be an int, got '0'"),
        (("plan", "inputs_on_host"), "yes", "plan.inputs_on_host must be true or false"),
        (("plan", "strategy"), "fast", "plan.strategy must be one of store_all, blocks, multilevel, binomial"),
        (("plan", "profile", "state_bytes_per_sample"), "x", "plan.profile.state_bytes_per_sample must be a finite number >= 0"),
        (("plan", "profile", "parameter_bytes"), -4, "plan.profile.parameter_bytes must be an int >= 0"),
        (("plan", "profile", "notes"), "one note", "plan.profile.notes must be a list of strings"),
        (("plan", "profile", "device_free_bytes"), 1.5, "plan.profile.device_free_bytes must be an int"),
        (("schedule", "batch_size"), 0, "schedule.batch_size must be an int >= 1"),
    ],
)
def test_plan_fields_checked_on_load(path, value, fragment):
    plan = vp.Plan(budget_bytes=10**9, profile=vp.CellProfile(notes=("a",)))
    text = plan.to_json(schedule=full_schedule())
    with pytest.raises(InvalidInputError, match="^vlrnn_planner: ") as info:
        vp.Plan.from_json(_with(text, path, value))
    assert fragment in str(info.value)


def test_a_block_length_off_its_multiple_is_rejected_on_load():
    text = _with(vp.fixed_plan(block_length=48, block_multiple=8).to_json(), ("plan", "block_length"), 50)
    with pytest.raises(InvalidInputError, match="block_length=50 is not a multiple of block_multiple=8.*use 48 or 56"):
        vp.Plan.from_json(text)


def test_records_are_plain_dicts_that_round_trip():
    s = full_schedule(boundaries=(0, 500, 1003), strategy="blocks", levels=())
    data = s.to_dict()
    assert json.loads(json.dumps(data)) == data  # primitives and lists only
    assert vp.Schedule.from_dict(data) == s
    assert vp.Prediction.from_dict(s.prediction.to_dict()) == s.prediction
    plan = vp.Plan(budget_bytes=10**9, profile=vp.CellProfile(), time_dim=2, block_multiple=3)
    assert vp.Plan.from_dict(plan.to_dict()) == plan
