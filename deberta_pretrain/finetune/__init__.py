"""Fine-tuning and downstream evaluation: GLUE-style sequence classification and regression from any checkpoint."""
