"""Small building blocks: the SAGE optimizers (bert_optim), the [CLS] pooler and the per-task heads."""
