"""How often a distilled student agrees with its teacher on reuters-r8 training texts (every 25th), and
the T = 2 soft-label loss it trained on, in fp32 and under bf16 autocast:

    .venv/bin/python results/study-real/probes/teacher_agreement.py \
        runs/study-real/finetune/reuters-r8/magnitude+kd-50/model \
        runs/study-real/finetune/reuters-r8/dense/model
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prunebert.data.tasks import load_task

torch.set_num_threads(1)
student_dir, teacher_dir = sys.argv[1], sys.argv[2]
task = load_task("reuters-r8")
tok = AutoTokenizer.from_pretrained(teacher_dir)
student = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
texts = task.train.select(range(0, len(task.train), 25))
for bf16 in (False, True):
    losses, agree, n = [], 0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(texts), 16):
            enc = tok(
                texts[i : i + 16]["text"], truncation=True, max_length=128, padding=True, return_tensors="pt"
            )
            ls, lt = student(**enc).logits.float(), teacher(**enc).logits.float()
            kl = F.kl_div(F.log_softmax(ls / 2, -1), F.softmax(lt / 2, -1), reduction="batchmean") * 4
            losses.append(kl.item())
            agree += (ls.argmax(-1) == lt.argmax(-1)).sum().item()
            n += len(ls)
    print(
        "bf16" if bf16 else "fp32",
        f"soft loss {np.mean(losses):.4f}",
        f"agreement {agree / n:.3f}",
        f"({n} texts)",
    )
