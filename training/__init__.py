"""Labels, training sets, models, evaluation and the MLflow registry."""
