"""GRIT checkpoints, from the bottom floor up: the files every checkpoint carries for sentence-transformers and remote
code (`sentence_transformers`), saving (`saving`), the offline default model (`default_model`), where a model name
leads (`resolve`; `from_pretrained` uses it), loading a model for use (`loading`) and converting stock checkpoints
(`conversion`).

The public functions are exported from `grit_hf` itself (`grit_hf.convert_checkpoint`, `grit_hf.load_model`, ...).
This `__init__` imports nothing: the model classes import the lower floors, the upper floors import the model
classes.
"""
