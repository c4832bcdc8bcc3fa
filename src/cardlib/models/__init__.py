"""Models: the DINOv3 teacher (and, from the distillation stage, the student)."""
