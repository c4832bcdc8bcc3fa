"""Training machinery shared by the teacher and the distillation stages."""
