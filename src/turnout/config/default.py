"""The embedded default config: a two-model local fleet that needs no file, no key and no data.

``turnout serve`` without ``--config`` uses it. Two llama.cpp servers are
started as children on loopback, one per model (one server per model: a
shared server reloads weights on every switch). SmolLM2-135M-Instruct answers
chat; Gemma 3 270M is a *base* model with no chat template, so it is driven
through ``/v1/completions`` with a prompt template. Route ``auto`` uses the
``prior`` router (quality per model given here, no training data), and each
model is the other's fallback. Prices are nominal, so that cost, budgets and
the cost term of the policy are exercised with non-zero numbers. A ``cascade``
route shows an answer-aware plan (SmolLM2 first, Gemma when SmolLM2 was unsure).
A keyword decision sends requests to continue a text to Gemma, and the stages
show the guards on the local fleet: a jailbreak guard, PII redaction restored in
the answer, and the semantic cache.
"""

from __future__ import annotations

from typing import Any

from turnout.config.loader import parse_config, resolve
from turnout.config.schema import TurnoutConfig

#: completion prompt for the base Gemma model: a plain Q/A frame it continues sensibly
GEMMA_TEMPLATE = "Question: {prompt}\nAnswer:"

DEFAULT: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 8000},
    "backends": {
        "local-smollm2": {
            "protocol": "llamacpp",
            "model": "smollm2",
            "timeouts": {"connect": 5, "first_token": 30, "total": 120},
            "retries": {"attempts": 1},
            "cooldown": {"failures": 3, "seconds": 10},
        },
        "local-gemma": {
            "protocol": "llamacpp",
            "model": "gemma3-270m",
            "completion_template": GEMMA_TEMPLATE,
            "timeouts": {"connect": 5, "first_token": 30, "total": 120},
            "retries": {"attempts": 1},
            "cooldown": {"failures": 3, "seconds": 10},
        },
    },
    "models": {
        "smollm2-135m": {
            "backend": "local-smollm2",
            "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.10},
            "context_window": 2048,
            "fallbacks": ["gemma3-270m"],
        },
        "gemma3-270m": {
            "backend": "local-gemma",
            "price": {"input_per_mtok": 0.10, "output_per_mtok": 0.20},
            "context_window": 2048,
            "fallbacks": ["smollm2-135m"],
        },
    },
    "routes": {
        "auto": {
            # Instruction-tuned SmolLM2 answers chat better than base Gemma; the prior says so.
            "router": {"type": "prior", "params": {"quality": {"smollm2-135m": 0.6, "gemma3-270m": 0.4}}},
            "candidates": ["smollm2-135m", "gemma3-270m"],
            "lambda": 1000.0,
            "fallbacks": ["gemma3-270m", "smollm2-135m"],
        },
        # A cascade: SmolLM2 answers first; when the top-2 margin of its tokens says it was unsure, Gemma answers
        # instead (every call paid for). Measured by bench/cascade_calibrate.py on 90 known-answer questions
        # (BENCHMARKS.md, cascades on the embedded fleet): SmolLM2's log-prob signals separate its right answers
        # from its wrong ones
        # (train AUC 0.72-0.79), Gemma's barely (0.59-0.62), and Gemma with log-probabilities takes seconds
        # (a 262k-token vocabulary), so SmolLM2 goes first. 0.562 escalates 20% of the training questions.
        "cascade": {
            "router": {"type": "prior", "params": {"quality": {"smollm2-135m": 0.6, "gemma3-270m": 0.4}}},
            "candidates": ["smollm2-135m", "gemma3-270m"],
            "lambda": 1000.0,
            "plan": {
                "kind": "cascade",
                "steps": [
                    {"model": "smollm2-135m", "accept": "margin", "threshold": 0.562},
                    {"model": "gemma3-270m", "fallbacks": ["smollm2-135m"]},
                ],
            },
        },
    },
    # A keyword signal and one decision rule: asking to continue or complete a text sends the request to Gemma,
    # a base model that continues text well, whatever the route's router says (x-turnout-rule: continuation).
    "signals": {
        "kw": {
            "type": "keywords",
            "params": {
                "sets": {
                    "continuation": [
                        "continue this",
                        "complete this",
                        "finish this sentence",
                        "finish the sentence",
                        "continue the story",
                    ]
                }
            },
        }
    },
    "decisions": [
        {
            "name": "continuation",
            "when": {"signal": "kw.continuation", "is": True},
            "applies_to": ["auto"],
            "use": {"route": "gemma3-270m"},
        }
    ],
    # The guards and the cache, in pipeline order within their phases (docs/config.md, "Stages"). They share
    # one embedding per request by MiniLM int8 (2.5x faster than fp32 for the same guard and cache figures),
    # loaded with the gateway (well under a second once its ONNX file exists).
    "stages": [
        # the detector shipped in the wheel; from 0.9 it blocks (no benign prompt of the measured sets scored
        # that high), between its threshold and 0.9 it only flags (x-turnout-flags: jailbreak, and the log)
        {"type": "jailbreak", "params": {"action": "block", "act_at": 0.9, "embedder": "minilm-int8"}},
        # e-mails, phones, cards, IBANs, SSNs, IPs and secrets leave as [EMAIL_1]... and come back in the
        # answer; secrets and financial numbers a model writes are redacted from answers, streamed or not
        {"type": "pii", "params": {"action": "redact"}},
        # repeated and rephrased questions answered from a per-key cache (x-turnout-cache: hit), at no cost
        {"type": "cache", "params": {"ttl_s": 3600, "embedder": "minilm-int8"}},
    ],
}


def default_config() -> TurnoutConfig:
    """The embedded default, parsed and resolved like any file."""
    return resolve(parse_config(DEFAULT, source="<embedded default>"))


__all__ = ["DEFAULT", "GEMMA_TEMPLATE", "default_config"]
