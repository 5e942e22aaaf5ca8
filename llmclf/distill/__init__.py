"""Distillation: label unlabelled texts with an LLM teacher, train a SetFit student on the labels.

```
unlabelled ──► teacher ──► select ──► train ──► export ──► score ──► calibrate ──► artifact
 texts        (store,     (confidence, (head-only, (ONNX,   (teacher  (router     (atomic dir,
              resumable,  balance,     full, end-  parity   and       threshold)  model card)
              cached)     gold rows)   to-end)     checked) student)
```

One module per stage, each handing the next a typed value; `pipeline.run_distill` runs them
in order on one `DistillConfig` (built by ``llmclf distill`` from its flags, dumped into the
model card):

1. `teacher`: every text labelled by the teacher, committed to the store as it arrives,
   resumable after a crash (`TeacherLabels`).
2. `select`: confident labels, balanced classes, gold and reviewed rows (`Selection`).
3. `train`: a sentence-transformers body (default ``all-MiniLM-L6-v2``) and a head, in one of
   three modes (`TrainedStudent`): ``head-only`` (the default: frozen body, logistic-regression
   head, seconds), ``full`` (SetFit contrastive body fine-tuning, then the head) or
   ``end-to-end`` (body and a linear head trained together on the teacher's labels).
4. `export`: ONNX fp32 and int8, each checked against torch (`Exported`).
5. `score`: the teacher and the student on the eval set, each once, each a stored eval run.
6. `calibrate`: the router's escalation threshold (``router.json``).
7. `artifact`: everything written into a temporary directory and renamed into place; the model
   card rendered from a template.

Example:
    >>> from llmclf.distill import distill                            # doctest: +SKIP
    >>> result = distill("eval_sets/sst2/task.yaml", "llm:local", "unlabelled.jsonl",
    ...                  "models/sst2", eval_set="sst2", mode="head-only")
    >>> result.student_metrics["accuracy"], result.escalation["escalation_threshold"]
    (0.85, 0.78)
"""

from __future__ import annotations

from llmclf.distill.calibrate import agreement, calibrate_escalation
from llmclf.distill.config import DEFAULT_MODE, MODES, DistillConfig, Mode
from llmclf.distill.pipeline import distill, run_distill
from llmclf.distill.result import DistillResult, result_summary
from llmclf.distill.select import (
    Selection,
    choose_min_confidence,
    gold_rows,
    select_training_set,
)
from llmclf.distill.teacher import (
    TeacherLabels,
    TeacherRow,
    export_teacher_labels,
    item_key,
    label_certainty,
    label_unlabeled,
    teacher_dataset,
    teacher_job_id,
)
from llmclf.distill.train import TrainedStudent, fit_head, save_student, train_student
from llmclf.errors import DistillError, TeacherError

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "DistillConfig",
    "DistillError",
    "DistillResult",
    "Mode",
    "Selection",
    "TeacherError",
    "TeacherLabels",
    "TeacherRow",
    "TrainedStudent",
    "agreement",
    "calibrate_escalation",
    "choose_min_confidence",
    "distill",
    "export_teacher_labels",
    "fit_head",
    "gold_rows",
    "item_key",
    "label_certainty",
    "label_unlabeled",
    "result_summary",
    "run_distill",
    "save_student",
    "select_training_set",
    "teacher_dataset",
    "teacher_job_id",
    "train_student",
]
