"""Knowledge distillation: train a model against a teacher's logits (Hinton et al. 2015).

loss = (1 - alpha) * CE(student, next tokens) + alpha * T^2 * KL(p_teacher,T || p_student,T)

with p_T = softmax(logits / T). The T^2 keeps the soft term's gradients on the scale of
the hard term's as T changes. `compress --heal-steps` heals a compressed model this way
against the model it came from; `train --teacher RUN` offers the same loss to any run.
The teacher must share the student's tokenizer (same ids, same vocabulary): its logits
are compared position by position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qtf_edge.evaluate import window_batches
from qtf_edge.runs import Run, RunError, load_run, sha256_file


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(softmax(teacher / T) || softmax(student / T)), float32."""
    student = F.log_softmax(student_logits.float().flatten(0, -2) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().flatten(0, -2) / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def distillation_loss(hard_loss: torch.Tensor, student_logits: torch.Tensor,
                      teacher_logits: torch.Tensor, alpha: float, temperature: float
                      ) -> torch.Tensor:
    """(1 - alpha) * hard_loss (next-token cross-entropy) + alpha * T^2 * soft KL."""
    soft = soft_kl(student_logits, teacher_logits, temperature)
    return (1 - alpha) * hard_loss + alpha * temperature ** 2 * soft


@torch.inference_mode()
def mean_kl(student, teacher, windows: list[list[int]], *, batch_size: int = 8,
            device: str | torch.device = "cpu") -> float:
    """KL(teacher || student) at T = 1 per token, averaged over held-out token windows, in
    float32 on every device: it compares a model with one derived from it, and bf16
    autocast rounds weights about as coarsely as int8 does (evaluate.windows_loss)."""
    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    total, tokens = 0.0, 0
    try:
        for ids in window_batches(windows, batch_size, device):
            student_logits, teacher_logits = student(ids[:, :-1]), teacher(ids[:, :-1])
            n = ids[:, :-1].numel()
            total += float(soft_kl(student_logits, teacher_logits)) * n
            tokens += n
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return total / max(tokens, 1)


def load_teacher(teacher: str | Run, tokenizer_hash: str, vocab_size: int,
                 device: torch.device, expected_model_sha256: str | None = None
                 ) -> tuple[torch.nn.Module, dict]:
    """(frozen teacher model on device, record {path, model_sha256} for the run's settings).

    ValueError naming --teacher when it is not a run folder, when its tokenizer or
    vocabulary differs from the student's, or (on resume) when its weights changed since
    the run began."""
    if isinstance(teacher, Run):
        run = teacher
    else:
        try:
            run = load_run(teacher)
        except RunError as error:
            raise RunError(f"--teacher: {error}") from None
    flag = f"--teacher {run.path}"
    if sha256_file(run.tokenizer_path) != tokenizer_hash:
        raise ValueError(f"{flag}: its tokenizer.json differs from the student's; a teacher "
                         f"must share the student's tokenizer (its logits are compared id "
                         f"by id)")
    if run.config.vocab_size != vocab_size:
        raise ValueError(f"{flag}: vocab_size {run.config.vocab_size} differs from the "
                         f"student's {vocab_size}")
    model_sha256 = sha256_file(run.path / "model.safetensors")
    if expected_model_sha256 is not None and model_sha256 != expected_model_sha256:
        raise ValueError(f"{flag}: its model.safetensors changed since this run began "
                         f"(sha256 {model_sha256[:12]}, expected {expected_model_sha256[:12]}); "
                         f"resume needs the same teacher")
    model = run.model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, {"path": str(run.path.resolve()), "model_sha256": model_sha256}
