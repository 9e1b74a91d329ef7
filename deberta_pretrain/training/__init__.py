"""Pretraining: distributed set-up, DeepSpeed config, optimizer and schedule, checkpoints, metrics, the loop."""
