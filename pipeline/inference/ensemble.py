"""Checks that several trained models can be merged as one: same tasks, classes and input."""
from __future__ import annotations

from pipeline.config.typed import ConfigError
from pipeline.inference.trained import TrainedModel


def check_ensemble(members: list[TrainedModel]) -> None:
    """An ensemble reads each image once, as its first member does: every member must be trained on the same
    classes, image size, resize and image policy, with heads of the same kinds under the same task names."""
    first = members[0]
    for member in members[1:]:
        differences = [f"{what}: {theirs!r} (first model: {ours!r})" for what, ours, theirs in (
            ("classes", first.class_names, member.class_names),
            ("data.image_size", first.config.data.image_size, member.config.data.image_size),
            ("data.resize", first.config.data.resize, member.config.data.resize),
            ("image policy", first.policy, member.policy),
            ("tasks", _kinds(first), _kinds(member)),
        ) if ours != theirs]
        if differences:
            raise ConfigError(f"ensemble: {member.checkpoint} does not match {first.checkpoint}: "
                              + "; ".join(differences))


def _kinds(member: TrainedModel) -> dict[str, str]:
    return {task: head.kind for task, head in member.model.heads.items()}
