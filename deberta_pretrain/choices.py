"""Named choices that the model implements and the config schema checks, in one place. Free of torch, so that a
config is checked (and ``--help`` answers) before torch is imported."""

ATTENTION_BACKENDS = ("eager", "sdpa", "flash", "auto")  # deberta.attention.set_attention_backend
EMBEDDING_SHARING = ("gdes", "es", "none")  # deberta.rtd.RTDModel: how generator and discriminator share embeddings
PRECISIONS = ("fp32", "bf16", "fp16")  # precision= of pretraining and fine-tuning
WANDB_MODES = ("offline", "online", "disabled")  # logging.wandb.mode
ZERO_STAGES = (0, 1, 2, 3)  # deepspeed.zero_stage
