"""turnout.routing: routers score prompts, one policy decides.

Pure algorithms (numpy; torch only inside the fit of the torch routers): no
I/O beyond :mod:`~turnout.routing.artifact`'s explicit save/load. Importing
this package imports no router module and no torch.
"""

from turnout.routing.artifact import load_router, save_router
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.policy import Policy, calibrate_lambda, choose, estimate_tokens, lambda_grid
from turnout.routing.registry import create_router, register_router, router_class, router_names

__all__ = [
    "Policy",
    "Prediction",
    "Router",
    "TrainingData",
    "calibrate_lambda",
    "choose",
    "create_router",
    "estimate_tokens",
    "lambda_grid",
    "load_router",
    "register_router",
    "router_class",
    "router_names",
    "save_router",
]
