"""A base's facts (inner model, head index, Detect inputs, fingerprint) are worked out once, where it is loaded, and
never outlive a change to the model: a trained copy never reuses its original's."""

from __future__ import annotations

import torch

import headkit
from headkit.base import clone_model
from headkit.trunk import FACTS_ATTRIBUTE, base_facts, fingerprint


def test_loading_works_the_facts_out_once_and_they_are_kept(base_weights):
    base = headkit.load_model(base_weights)
    kept = getattr(base, FACTS_ATTRIBUTE)
    assert base_facts(base) is kept and base_facts(base) is kept  # asked again: the same record
    assert (kept.head_index, kept.detect_from, kept.channels) == (22, (15, 18, 21), (128, 256, 512))
    assert kept.strides == (8.0, 16.0, 32.0) and dict(kept.names) == {0: "Normal", 1: "Fall"}
    assert fingerprint(base) == kept.fingerprint and len(kept.fingerprint) == 64
    assert FACTS_ATTRIBUTE not in vars(base.model), "the inner model is pickled into checkpoints: nothing kept there"


def test_a_copy_changed_in_place_gets_fresh_facts_and_the_original_keeps_its_own(base):
    original = fingerprint(base)
    copy = clone_model(base)
    assert getattr(copy, FACTS_ATTRIBUTE, None) is None, "a copy does not inherit its original's record"
    assert fingerprint(copy) == original  # the same weights, worked out anew
    with torch.no_grad():
        next(copy.model.model[0].parameters()).add_(1.0)  # what an optimizer step does to a trunk weight
    assert fingerprint(copy) != original and fingerprint(base) == original
    copy.model.names = {0: "a", 1: "b", 2: "c"}  # a new class table (Ultralytics' trainer sets one)
    assert dict(base_facts(copy).names) == {0: "a", 1: "b", 2: "c"}
    assert dict(base_facts(base).names) == {0: "Normal", 1: "Fall"}
