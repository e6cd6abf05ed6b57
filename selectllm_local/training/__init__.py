"""QLoRA fine-tuning on a selection: the training set, the trainer, its progress relay."""
