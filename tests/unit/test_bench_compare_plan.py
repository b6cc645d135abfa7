"""``bench compare``'s plan and report for the channels scenario: pure, no processes."""

from __future__ import annotations

from relay.bench.compare import (
    IN_FLIGHT_DELIVERIES,
    MAX_WINDOW,
    Measurement,
    Pinning,
    Plan,
    Point,
    Report,
    check_plan,
    combined,
    failures,
    format_report,
    report_json,
)


def _plan(**changes: object) -> Plan:
    fields: dict[str, object] = {
        "scenarios": ("channels",),
        "subscribers": (10,),
        "idle": (100,),
        "systems": ("relaynet", "socketio"),
        "seconds": 1.0,
        "rounds": 1,
        "channels": (1, 4),
    }
    return Plan(**(fields | changes))  # type: ignore[arg-type]


def _generator(acks: float, p99: float, lost: int = 0) -> dict[str, object]:
    return {
        "ok": True, "published": 100, "acked": 100, "ack_errors": 0, "first_error": None,
        "deliveries": 100, "lost": lost, "disordered": 0, "disconnected": 0,
        "acks_per_s": acks, "deliveries_per_s": acks, "generator_cpu_cores": 0.1,
        "subscribers": 1, "latency_ms": {"p50": p99 / 2, "p99": p99, "max": p99},
        "ack_ms": {"p50": 1.0, "p99": 2.0}, "window": 2500,
    }  # fmt: skip


def test_channels_points_measure_relaynet_only_and_split_the_window() -> None:
    points = [p for p in _plan().points() if p.scenario == "channels"]
    assert [p.channels for p in points] == [1, 4]
    assert all(p.systems(("relaynet", "socketio", "ws")) == ["relaynet"] for p in points)
    assert points[0].window == MAX_WINDOW
    assert points[1].window == MAX_WINDOW // 4
    assert Point("fanout", 100).window == IN_FLIGHT_DELIVERIES // 100  # unchanged
    assert _plan().runs() == 2


def test_combined_adds_rates_and_keeps_the_worst_latency() -> None:
    total = combined([_generator(1000.0, 20.0), _generator(1500.0, 35.0, lost=2)])
    assert total["channels"] == 2
    assert total["acks_per_s"] == 2500.0
    assert total["lost"] == 2
    assert total["latency_ms"] == {"p50": 17.5, "p99": 35.0, "max": 35.0}
    assert len(total["per_channel"]) == 2


def test_the_report_compares_each_channel_count_with_one() -> None:
    plan = _plan()
    one, four = (p for p in plan.points() if p.scenario == "channels")
    runs = [
        Measurement(1, one, "relaynet", combined([_generator(4000.0, 10.0)])),
        Measurement(1, four, "relaynet", combined([_generator(1500.0, 10.0)] * 4)),
    ]
    report = Report(plan, Pinning([], [], "not pinned"), {"relaynet": "relaynet"}, runs)
    text = format_report(report)
    assert "relaynet acks/s ÷ its figure at K=1: K=1 1.00x   K=4 1.50x" in text
    assert "Socket.IO" not in text  # nothing but relaynet was measured
    assert report_json(report)["ratios"] == []
    assert failures(report) == []
    runs[1].figures["lost"] = 1
    assert failures(report) and "channels" in failures(report)[0]


def test_check_plan_refuses_channels_it_cannot_measure() -> None:
    assert check_plan(_plan()) is None
    assert "relaynet" in (check_plan(_plan(systems=("socketio",))) or "")
    assert "--channels" in (check_plan(_plan(channels=(0,))) or "")
    assert "--channels" in (check_plan(_plan(channels=())) or "")
