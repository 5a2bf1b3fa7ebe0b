"""The five health models, step by step against sequences worked out by hand."""
from __future__ import annotations

import json
import math

import pytest

from beamlytics.detectors.health import HEALTH_MODELS, Kalman, Logistic, make_health_model


def c2(eta: float, beta: float) -> float:
    return -math.tanh(2 * (eta - beta))


def run(model, etas, beta):
    return [model.update(eta, c2(eta, beta)) for eta in etas]


def test_registry_has_the_five_models_by_name():
    assert sorted(HEALTH_MODELS) == ["exponential", "kalman", "logistic", "recovery", "sigmoid"]
    with pytest.raises(ValueError, match="unknown health model"):
        make_health_model("nope")


def test_sigmoid_steps():
    # alpha = 3.063, beta = 0.2; eta 0.1 then 0.9.
    # step 1: C2 = -tanh(2(0.1-0.2)) = tanh(0.2) = 0.197375320; Ra = 1/(1+exp(-3.063*(1+0.197375-0.2)))
    #       = 1/(1+exp(-3.054961)) = 1/1.047125 = 0.954996
    # step 2: C2 = -tanh(1.4) = -0.885352; Ra = 1/(1+exp(-3.063*(0.954996-0.885352-0.2)))
    #       = 1/(1+exp(0.399280)) = 1/2.490752 = 0.401485
    model = make_health_model("sigmoid", alpha=3.063, beta=0.2)
    assert run(model, [0.1, 0.9], beta=0.2) == pytest.approx([0.954996, 0.401485], abs=2e-6)


def test_sigmoid_far_below_beta_is_zero_not_an_overflow():
    model = make_health_model("sigmoid", alpha=1000.0, beta=1.0)
    assert model.update(1.0, -1.0) == 0.0


def test_logistic_is_stuck_at_its_starting_value_of_one():
    model = make_health_model("logistic")
    assert run(model, [0.9, 0.9, 0.0], beta=0.3) == [1.0, 1.0, 1.0]


def test_logistic_steps_from_half():
    # Ra = 0.5, gamma = 0.2, C2 = 0.4: Ra = 0.5 + 0.2*0.4*0.5*0.5 = 0.52
    # then C2 = -1: Ra = 0.52 - 0.2*0.52*0.48 = 0.47008
    model = Logistic.from_dict({"gamma": 0.2, "ra": 0.5})
    assert model.update(0.0, 0.4) == pytest.approx(0.52)
    assert model.update(1.0, -1.0) == pytest.approx(0.47008)


def test_exponential_steps():
    # k = 0.5: eta 0.9 -> Ra = exp(-0.5*0.4) = 0.818731; eta 0.3 (below 0.5) -> unchanged;
    # eta 0.7 -> 0.818731*exp(-0.1) = 0.740818
    model = make_health_model("exponential")
    assert run(model, [0.9, 0.3, 0.7], beta=0.3) == pytest.approx([0.818731, 0.818731, 0.740818], abs=1e-6)


def test_recovery_steps():
    # gamma 0.02, delta 0.2, beta 0.2:
    # eta 0.7: Ra = 1 + 0.02*0 - 0.2*0.5*1 = 0.9
    # eta 0.7: Ra = 0.9 + 0.02*0.1 - 0.2*0.5*0.9 = 0.812
    # eta 0.1: Ra = 0.812 + 0.02*0.188 = 0.81576
    model = make_health_model("recovery")
    assert model.params() == {"gamma": 0.02, "delta": 0.2, "beta": 0.2}
    assert run(model, [0.7, 0.7, 0.1], beta=0.2) == pytest.approx([0.9, 0.812, 0.81576])


def test_recovery_is_clipped_at_zero():
    model = make_health_model("recovery", delta=5.0)
    assert model.update(1.0, -1.0) == 0.0  # 1 - 5*0.8*1 = -3, clipped


def test_kalman_steps():
    # Q 0.005, R 0.05, k 3, P0 0.1.
    # step 1, eta 0.2: z = exp(-0.6) = 0.548812; P' = 0.105; K = 0.105/0.155 = 0.677419
    #   Ra = 1 + 0.677419*(0.548812-1) = 0.694357; P = 0.322581*0.105 = 0.033871
    # step 2, eta 0: z = 1; P' = 0.038871; K = 0.038871/0.088871 = 0.437387
    #   Ra = 0.694357 + 0.437387*0.305643 = 0.828041; P = 0.562613*0.038871 = 0.021869
    model = make_health_model("kalman")
    assert run(model, [0.2, 0.0], beta=0.3) == pytest.approx([0.694357, 0.828041], abs=1e-6)
    assert model.p == pytest.approx(0.021869, abs=1e-6)


@pytest.mark.parametrize("name", sorted(HEALTH_MODELS))
def test_state_round_trips_through_json(name):
    etas = [0.1, 0.8, 0.6, 0.2]
    original = make_health_model(name)
    run(original, etas[:2], beta=0.3)
    restored = HEALTH_MODELS[name].from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored.to_dict() == original.to_dict()
    assert run(restored, etas[2:], beta=0.3) == run(original, etas[2:], beta=0.3)


def test_kalman_from_dict_keeps_the_variance():
    model = Kalman.from_dict({"q": 0.005, "r": 0.05, "k": 3.0, "p0": 0.1, "ra": 0.5, "p": 0.02})
    assert (model.ra, model.p, model.p0) == (0.5, 0.02, 0.1)
