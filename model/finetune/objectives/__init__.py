"""Fine-tuning objectives, one module each, in one registry: `--method` picks one, `--adapter` how weights train."""
from __future__ import annotations

from model.finetune.objectives.objective import Objective
from model.finetune.objectives.orpo import ORPO
from model.finetune.objectives.preference import DPO, RSO
from model.finetune.objectives.sft import SFT

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (SFT, DPO, RSO, ORPO)}
