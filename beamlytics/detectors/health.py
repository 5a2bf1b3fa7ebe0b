"""Health indicators: how a window's fuzzy anomaly degree η moves an endpoint's health Ra.

Each model turns the per-window evidence of `poisson.analyze_window` (η, and C2 = −tanh(2(η − β)),
positive when the window looks healthy) into a slowly moving health level Ra in [0, 1]:
1 is healthy, 0 is as sick as it gets. They differ in memory and in whether they recover:

- `sigmoid`: Ra = 1/(1 + exp(−α((Ra + C2) − β))). Recovers within a window or two.
  Ra falls below 0.5 exactly when Ra_prev + C2 < β.
- `logistic`: Ra += γ·C2·Ra·(1 − Ra). Ra = 1 (the starting value) and Ra = 0 are fixed
  points, so started at 1 it never moves: kept because the seed notebook compared it.
- `exponential`: Ra *= exp(−k·max(0, η − 0.5)). Only decays, never recovers: a record of
  how much clearly anomalous traffic the endpoint has had.
- `recovery`: Ra += γ(1 − Ra) − δ·max(0, η − β)·Ra. Slow decay and slow recovery.
- `kalman`: a scalar Kalman filter tracking z = exp(−kη); its gain settles near 0.27 with
  the defaults, so Ra is roughly an exponential moving average of z.

Every model starts at Ra = 1 and clips Ra to [0, 1] after each update. State is plain
data (`to_dict`/`from_dict`) so a detector holding them can be checkpointed.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping


class HealthModel(ABC):
    """One health indicator: parameters, the current Ra, and how one window moves it."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.ra = 1.0

    def update(self, eta: float, c2: float) -> float:
        """Move Ra by one window's evidence and return the new Ra."""
        self.ra = min(1.0, max(0.0, self._next_ra(eta, c2)))
        return self.ra

    @abstractmethod
    def _next_ra(self, eta: float, c2: float) -> float: ...

    @abstractmethod
    def params(self) -> dict[str, float]: ...

    def to_dict(self) -> dict[str, Any]:
        return {**self.params(), "ra": self.ra}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "HealthModel":
        model = cls(**{key: state[key] for key in cls._param_names()})
        model.ra = float(state["ra"])
        return model

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls().params())


class Sigmoid(HealthModel):
    name = "sigmoid"

    def __init__(self, alpha: float = 3.063, beta: float = 0.5):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)

    def _next_ra(self, eta: float, c2: float) -> float:
        exponent = -self.alpha * ((self.ra + c2) - self.beta)
        # exp overflows past ~709; the sigmoid is 0 there anyway.
        return 0.0 if exponent > 700 else 1.0 / (1.0 + math.exp(exponent))

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}


class Logistic(HealthModel):
    name = "logistic"

    def __init__(self, gamma: float = 0.2):
        super().__init__()
        self.gamma = float(gamma)

    def _next_ra(self, eta: float, c2: float) -> float:
        return self.ra + self.gamma * c2 * self.ra * (1.0 - self.ra)

    def params(self) -> dict[str, float]:
        return {"gamma": self.gamma}


class Exponential(HealthModel):
    name = "exponential"

    def __init__(self, k: float = 0.5):
        super().__init__()
        self.k = float(k)

    def _next_ra(self, eta: float, c2: float) -> float:
        return self.ra * math.exp(-self.k * max(0.0, eta - 0.5))

    def params(self) -> dict[str, float]:
        return {"k": self.k}


class Recovery(HealthModel):
    name = "recovery"

    def __init__(self, gamma: float = 0.02, delta: float = 0.2, beta: float = 0.2):
        super().__init__()
        self.gamma = float(gamma)
        self.delta = float(delta)
        self.beta = float(beta)

    def _next_ra(self, eta: float, c2: float) -> float:
        return self.ra + self.gamma * (1.0 - self.ra) - self.delta * max(0.0, eta - self.beta) * self.ra

    def params(self) -> dict[str, float]:
        return {"gamma": self.gamma, "delta": self.delta, "beta": self.beta}


class Kalman(HealthModel):
    name = "kalman"

    def __init__(self, q: float = 0.005, r: float = 0.05, k: float = 3.0, p0: float = 0.1):
        super().__init__()
        self.q = float(q)
        self.r = float(r)
        self.k = float(k)
        self.p0 = float(p0)
        self.p = self.p0  # variance of the Ra estimate

    def _next_ra(self, eta: float, c2: float) -> float:
        measurement = math.exp(-self.k * eta)
        predicted_p = self.p + self.q
        gain = predicted_p / (predicted_p + self.r)
        self.p = (1.0 - gain) * predicted_p
        return self.ra + gain * (measurement - self.ra)

    def params(self) -> dict[str, float]:
        return {"q": self.q, "r": self.r, "k": self.k, "p0": self.p0}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "p": self.p}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "Kalman":
        model = super().from_dict(state)
        model.p = float(state["p"])
        return model


HEALTH_MODELS: dict[str, type[HealthModel]] = {
    model.name: model for model in (Sigmoid, Logistic, Exponential, Recovery, Kalman)
}


def make_health_model(name: str, **params: float) -> HealthModel:
    """The registered model `name` with `params` (the rest take their defaults)."""
    try:
        model_class = HEALTH_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown health model {name!r}; known: {sorted(HEALTH_MODELS)}") from None
    return model_class(**params)


def health_model_from_dict(name: str, state: Mapping[str, Any]) -> HealthModel:
    return HEALTH_MODELS[name].from_dict(state)
