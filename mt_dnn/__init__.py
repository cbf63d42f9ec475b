"""The multi-task model (encoder + one head per task), its losses, and the training machinery around them."""
