"""Knowledge distillation during training (model.distill): the frozen teacher(s), the FitNets adapters, and how
their terms join the student's loss.

The train job builds a Distiller (load_distiller, which checks that the teacher can teach this student before
any run starts); OptimizerStep asks it for each micro-batch's terms. The teacher runs in eval mode under no_grad
on the batch's clean image, inside the step's autocast. It is in no optimiser, checkpoint or DDP wrapper (each
rank holds its own copy): the config records where it came from. The adapters are trained in their own
optimiser group and saved under the checkpoint's "distill" key, outside the model's state dict, so predict and
export never see them. The per-kind losses are in distill_losses.py.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.weights import WeightsFileError
from pipeline.compression.distill_losses import KINDS, HeadOutputs
from pipeline.config.schema import DistillConfig
from pipeline.config.typed import ConfigError
from pipeline.inference.trained import TrainedModel, load_trained
from pipeline.model import MultiTaskModel

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    key: str                        # the config key that names it: model.distill.teacher or ...teacher[i]
    trained: TrainedModel

    @property
    def model(self) -> MultiTaskModel:
        return self.trained.model

    @property
    def where(self) -> str:
        """The key and the file, for errors."""
        return f"{self.key}: {self.trained.checkpoint}"


@dataclass
class DistillTerms:
    tasks: dict[str, dict[str, Tensor]]   # every head's terms; a distilled task's scaled by 1 - alpha, plus "distill"
    features: Tensor | None               # the FitNets term, added to the total outside the weighting; None: off


class Distiller:
    """The teachers, the distilled tasks (task -> head kind) and, with features, one 1x1 adapter per teacher and
    stage pair (student stage, that teacher's stage)."""

    def __init__(self, config: DistillConfig, teachers: list[Teacher], tasks: dict[str, str],
                 stage_pairs: list[list[tuple[int, int]]], adapters: nn.ModuleDict) -> None:
        self.config, self.teachers, self.tasks = config, teachers, tasks
        self.stage_pairs, self.adapters = stage_pairs, adapters

    # ---- what the trainer keeps -----------------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def param_group(self, base_lr: float) -> dict | None:
        """The main optimiser's group for the adapters (scheduled like the rest); None without features."""
        params = self.parameters()
        return {"name": "distill", "params": params, "lr": base_lr} if params else None

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise ConfigError("model.distill: the checkpoint holds no distillation state (it was trained without "
                              "model.distill), so it cannot continue as a distilled run")
        self.adapters.load_state_dict(state["adapters"])

    # ---- one micro-batch ------------------------------------------------------------------------------------

    @contextmanager
    def watch(self, student: MultiTaskModel) -> Iterator[list]:
        """Inside, the student's forward leaves its backbone's stage maps in the yielded list (with features on).

        A forward hook rather than a change to the model's forward; only the first call is kept, the clean
        image's (a denoising head runs the backbone again on its corrupted copy)."""
        captured: list = []
        if self.config.features is None:
            yield captured
            return

        def keep_first(module: nn.Module, args: Any, output: Any) -> None:
            if not captured:
                captured.append(output)

        handle = student.backbone.register_forward_hook(keep_first)
        try:
            yield captured
        finally:
            handle.remove()

    def terms(self, student: MultiTaskModel, head_terms: dict[str, dict[str, Tensor]], outputs: dict[str, Any],
              image: Tensor, captured: list) -> DistillTerms:
        """The heads' terms with the distilled tasks' rescaled and their `distill` term added, and the feature
        term. Called inside the step's autocast, on the image the student saw."""
        teacher_outputs, teacher_maps = self.run_teachers(image)
        alpha, tasks = self.config.alpha, dict(head_terms)
        for task, kind in self.tasks.items():
            teachers = [HeadOutputs(t.model.heads[task], out[task]) for t, out in zip(self.teachers, teacher_outputs)]
            loss = KINDS[kind].loss(HeadOutputs(student.heads[task], outputs[task]), teachers, self.config.temperature)
            tasks[task] = {**{name: (1 - alpha) * value for name, value in head_terms[task].items()},
                           "distill": alpha * loss}
        features = self.feature_term(captured[0], teacher_maps) if self.config.features is not None else None
        return DistillTerms(tasks, features)

    @torch.no_grad()
    def run_teachers(self, image: Tensor) -> tuple[list[dict[str, Any]], list[list[Tensor]]]:
        """Each teacher's outputs of the distilled tasks and its stage maps. The heads are called as
        MultiTaskModel.forward calls them in eval mode, so the heads nobody distils cost nothing."""
        outputs, maps = [], []
        for teacher in self.teachers:
            features = teacher.model.backbone(image)
            outputs.append({task: teacher.model.heads[task](features, image) for task in self.tasks})
            maps.append(features)
        return outputs, maps

    def feature_term(self, student_maps: list[Tensor], teacher_maps: list[list[Tensor]]) -> Tensor:
        """weight x the MSE of each adapted student stage to the teacher's, summed over stages, averaged over
        teachers; the adapted map is resized to the teacher's."""
        total = None
        for member, (maps, pairs) in enumerate(zip(teacher_maps, self.stage_pairs)):
            for pair, (mine, theirs) in enumerate(pairs):
                adapted = self.adapters[adapter_name(member, pair)](student_maps[mine])
                target = maps[theirs].float()
                if adapted.shape[-2:] != target.shape[-2:]:
                    adapted = F.interpolate(adapted, size=target.shape[-2:], mode="bilinear", align_corners=False)
                error = F.mse_loss(adapted.float(), target)
                total = error if total is None else total + error
        return self.config.features.weight * total / len(teacher_maps)


def adapter_name(member: int, pair: int) -> str:
    return f"teacher{member}_pair{pair}"


# ---- building and checking ---------------------------------------------------------------------------------

def load_distiller(config: DistillConfig, student: MultiTaskModel, class_names: list[str], device: torch.device,
                   tracking_uri: str | None) -> Distiller:
    """Load the teacher(s) and check that they can teach `student` (classes, image channels, tasks and their
    head kinds and layouts, feature stages): any mismatch is a ConfigError naming the key and the file."""
    teachers = [load_teacher(key, source, tracking_uri) for key, source in teacher_sources(config)]
    for teacher in teachers:
        check_teacher(teacher, student, class_names)
    tasks = distilled_tasks(config, student, teachers)
    stage_pairs = feature_stages(config, student, teachers)
    adapters = nn.ModuleDict({   # 1x1: student channels -> teacher channels, as FitNets' regressor
        adapter_name(member, pair): nn.Conv2d(student.backbone.channels[mine], t.model.backbone.channels[theirs], 1)
        for member, (t, pairs) in enumerate(zip(teachers, stage_pairs)) for pair, (mine, theirs) in enumerate(pairs)
    })
    for teacher in teachers:
        teacher.model.requires_grad_(False).eval().to(device)
    log.info("distilling %s%s from %s", ", ".join(tasks) or "no task outputs",
             f" and backbone stages {[mine for mine, _ in stage_pairs[0]]}" if config.features else "",
             ", ".join(str(t.trained.checkpoint) for t in teachers))
    return Distiller(config, teachers, tasks, stage_pairs, adapters.to(device))


def teacher_sources(config: DistillConfig) -> list[tuple[str, str]]:
    if isinstance(config.teacher, list):
        return [(f"model.distill.teacher[{i}]", source) for i, source in enumerate(config.teacher)]
    return [("model.distill.teacher", config.teacher)]


def load_teacher(key: str, source: str, tracking_uri: str | None) -> Teacher:
    try:
        return Teacher(key, load_trained(source, tracking_uri))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{key}: {error}") from None
    except WeightsFileError as error:
        raise WeightsFileError(f"{key}: {error}") from None


def check_teacher(teacher: Teacher, student: MultiTaskModel, class_names: list[str]) -> None:
    if teacher.trained.class_names != list(class_names):
        raise ConfigError(f"{teacher.where}: the teacher's classes {teacher.trained.class_names} differ from the "
                          f"data's {list(class_names)}; its class outputs would teach other classes")
    theirs, mine = teacher.model.backbone.in_channels, student.backbone.in_channels
    if theirs != mine:
        raise ConfigError(f"{teacher.where}: the teacher takes {theirs}-channel images, the student {mine} "
                          "(data.channels); both must see the same images")


def distilled_tasks(config: DistillConfig, student: MultiTaskModel, teachers: list[Teacher]) -> dict[str, str]:
    """Task -> head kind. Listed tasks must be in every teacher with the same kind; null: the tasks that are."""
    if config.tasks is None:
        tasks = [task for task, head in student.heads.items() if head.kind in KINDS
                 and all(task in t.model.heads and t.model.heads[task].kind == head.kind for t in teachers)]
        if not tasks and config.features is None:
            raise ConfigError(f"{teachers[0].where}: the teacher has no task of the student's "
                              f"({', '.join(student.heads)}) with the same head kind (its tasks: "
                              f"{', '.join(teachers[0].model.heads)}), and model.distill.features is null: "
                              "nothing to distil")
    else:
        tasks = list(dict.fromkeys(config.tasks))
        for index, task in enumerate(config.tasks):
            for teacher in teachers:
                require_task(teacher, task, student.heads[task].kind, f"model.distill.tasks[{index}]")
    for task in tasks:
        for teacher in teachers:
            why = KINDS[student.heads[task].kind].mismatch(student.heads[task], teacher.model.heads[task])
            if why:
                raise ConfigError(f"{teacher.where}: task {task!r}: {why}; or leave the task out of "
                                  "model.distill.tasks")
    return {task: student.heads[task].kind for task in tasks}


def require_task(teacher: Teacher, task: str, kind: str, key: str) -> None:
    heads = teacher.model.heads
    if task not in heads:
        raise ConfigError(f"{key}: task {task!r} is not in the teacher {teacher.trained.checkpoint} (its tasks: "
                          f"{', '.join(heads)})")
    if heads[task].kind != kind:
        raise ConfigError(f"{key}: task {task!r} is a {kind} head in the student but a {heads[task].kind} head in "
                          f"the teacher {teacher.trained.checkpoint}")
    if kind not in KINDS:
        raise ConfigError(f"{key}: task {task!r}: no distillation loss for {kind} heads; known: {', '.join(KINDS)}")


def feature_stages(config: DistillConfig, student: MultiTaskModel,
                   teachers: list[Teacher]) -> list[list[tuple[int, int]]]:
    """Per teacher, (student stage, teacher stage) per features.stages entry, each index resolved against its
    own backbone (-1: each one's deepest)."""
    stages = config.features.stages if config.features is not None else []
    keys = [f"model.distill.features.stages[{index}]" for index in range(len(stages))]
    mine = [stage_index(stage, len(student.backbone.stages), key, "the student's backbone")
            for stage, key in zip(stages, keys)]
    return [[(m, stage_index(stage, len(t.model.backbone.stages), key, f"the teacher's ({t.trained.checkpoint})"))
             for m, stage, key in zip(mine, stages, keys)] for t in teachers]


def stage_index(stage: int, count: int, key: str, whose: str) -> int:
    if not -count <= stage < count:
        raise ConfigError(f"{key}: stage {stage} is out of range; {whose} has stages 0..{count - 1} "
                          f"(or -{count}..-1 from the deepest)")
    return stage % count
